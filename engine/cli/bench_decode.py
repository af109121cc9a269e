"""`int8wb bench-decode`: greedy decoding with the KV cache, tokens/s per method against its memory bound.

int8wb bench-decode --methods absmax-tensor,vectorwise,llm-int8,weight-only --new-tokens 32 --repeats 3
int8wb bench-decode --prompt "The with statement" --json
"""

from __future__ import annotations

from typing import Any

from int8wb.engine.cli import _common


def add_parser(subparsers) -> None:
    command = _common.documented_command(
        subparsers,
        "bench-decode",
        help="tokens/s of greedy decoding per method, against the machine's memory bandwidth",
        doc=__doc__,
    )
    _common.quantizing_options(command)
    _common.methods_option(command)
    command.add_argument("--new-tokens", type=int, default=32, help="tokens generated per run (default 32)")
    command.add_argument(
        "--prompt-tokens", type=int, default=32, help="prompt length: the evaluation text's first tokens (default 32)"
    )
    command.add_argument("--prompt", default=None, help="a prompt text instead of the evaluation text")
    command.add_argument("--repeats", type=int, default=3, help="timed runs per method; medians shown (default 3)")
    command.add_argument("--batch", type=int, default=1, help="sequences decoded together (default 1)")
    command.add_argument(
        "--copy-mib", type=int, default=256, help="size of the copy that measures memory bandwidth (default 256)"
    )
    command.set_defaults(func=cmd_bench_decode)


def cmd_bench_decode(args) -> int:
    from int8wb.engine.measure.decode import DecodeSettings

    params = _common.params_from(
        args, "new_tokens", "prompt_tokens", "prompt", "repeats", "batch", "copy_mib", "corpus"
    )
    DecodeSettings.from_params(params)  # a typo is refused before the model loads
    session = _common.session_with_model(args)
    methods = _common.parse_methods(args.methods)
    if _common.needs_scan(methods):
        _common.run_scan(session, args)
    _common.run_quantize(session, args, methods)
    result = _common.with_progress(args, "decode", session.bench_decode, {**params, "methods": methods})
    return _common.print_result(args, result, format_report)


def format_report(result: dict[str, Any]) -> str:
    """The measured table, the copy bandwidth it is held against, and each method's first generated tokens."""
    s, copy = result["settings"], result["copy_bandwidth"]
    lines = [
        f"greedy decoding of {s['new_tokens']} tokens after a {s['prompt_tokens']}-token prompt from {result['source']}, "
        f"batch {s['batch']}, {s['device']} {s['dtype']}, median of {s['repeats']} runs",
        f"memory bandwidth of this machine: {copy['bytes_per_s'] / 1e9:.1f} GB/s "
        f"(a {copy['bytes'] / 2**20:.0f} MiB copy, read + write bytes per second, median of {len(copy['runs'])})",
        "",
    ]
    header = f"{'method':<24}{'tokens/s':>10}{'bound':>10}{'of bound':>10}{'MB/token':>10}{'achieved GB/s':>15}{'differs at':>12}"
    lines += [header, "-" * len(header)]
    for row in result["rows"]:
        differs = "-" if row["diverges_at"] is None else str(row["diverges_at"])
        lines.append(
            f"{row['method']:<24}{row['tokens_per_s']:>10.1f}{row['bound_tokens_per_s']:>10.1f}"
            f"{row['fraction_of_bound']:>10.0%}{row['bytes_per_token'] / 1e6:>10.1f}"
            f"{row['achieved_bytes_per_s'] / 1e9:>15.2f}{differs:>12}"
        )
    lines += [
        "",
        "bound: tokens/s if a step took only the time to read its planned bytes at the copy's bandwidth; "
        "differs at: the first generated token that is not the first row's",
        "",
        f"prompt: {result['prompt']!r}",
        f"first {s['shown_tokens']} generated tokens:",
    ]
    lines += [f"  {row['method']:<24}{row['text']!r}" for row in result["rows"]]
    return "\n".join(lines)
