"""`int8wb sensitivity`: which Linears to keep in floating point so a method meets a perplexity target."""

from __future__ import annotations

from typing import Any

from int8wb.engine.cli import _common
from int8wb.engine.measure.sensitivity import GROUPS, SweepSettings
from int8wb.engine.vocabulary import DEFAULT_REPAIR_METHOD, METHODS

MB = 1e6


def add_parser(subparsers) -> None:
    command = subparsers.add_parser(
        "sensitivity", help="rank layers by what keeping them in floating point buys; the smallest skip list"
    )
    _common.model_options(command)
    _common.scan_options(command, tokens_flag="--calibration-tokens")
    command.add_argument(
        "--method",
        default=DEFAULT_REPAIR_METHOD,
        choices=METHODS,
        help=f"method to repair (default {DEFAULT_REPAIR_METHOD})",
    )
    command.add_argument("--target", type=float, default=1.0, help="allowed perplexity change in %% (default 1.0)")
    command.add_argument(
        "--group",
        default=SweepSettings.group,
        choices=GROUPS,
        help="input: the Linears that read one input, which vLLM fuses (default); linear: each Linear, the "
        "smallest list, for transformers + bitsandbytes; layer: a decoder layer's Linears, the fastest sweep",
    )
    command.add_argument("--tokens", type=int, default=2048, help="evaluation tokens of the sweep (default 2048)")
    command.add_argument(
        "--holdout-tokens", type=int, default=2048, help="further tokens that check the list (default 2048)"
    )
    command.add_argument("--window", type=int, default=512, help="tokens per evaluation window (default 512)")
    command.set_defaults(func=cmd_sensitivity)


def cmd_sensitivity(args) -> int:
    params = _common.params_from(
        args, "method", "target", "group", "tokens", "holdout_tokens", "window", "threshold", "corpus"
    )
    SweepSettings.from_params(params)  # a wrong setting is refused before the model loads
    session = _common.session_with_model(args)
    if _common.needs_scan([args.method]):
        _common.run_scan(session, args)
    result = _common.with_progress(args, "sensitivity", session.sensitivity, params)
    return _common.print_result(args, result, format_sensitivity)


def format_sensitivity(result: dict[str, Any]) -> str:
    """The ranking, the curve the greedy list walks, and the list in the forms other tools take."""
    base = result["baseline"]

    def change(value: float) -> str:
        return f"{100 * (value / base - 1):+.2f}%"

    lines = [
        f"{result['method']}: perplexity {result['quantized']:.3f} ({change(result['quantized'])}) against "
        f"{base:.3f} on {result['sweep_tokens']:,} tokens; target {result['target_pct']:+g}%",
        f"{'group':<28}{'float MB':>10}{'perplexity quantized alone':>28}",
    ]
    by_group = {g["group"]: g for g in result["groups"]}
    for name in result["ranking"][:10]:
        entry = by_group[name]
        lines.append(
            f"{name:<28}{entry['float_bytes'] / MB:>10.1f}{entry['perplexity']:>20.3f} ({change(entry['perplexity'])})"
        )
    lines.append(
        f"float MB kept -> perplexity (measured change; the change its divergence gives, at most, with "
        f"{result['confidence']:.0%} confidence):"
    )
    for point in result["curve"]:
        added = f"  + {', '.join(point['added'])}" if point["added"] else "  (nothing kept)"
        lines.append(
            f"  {point['float_bytes'] / MB:>8.1f} MB  {point['perplexity']:.3f} ({point['change_pct']:+.2f}%; "
            f"{point['expected_pct']:+.2f}%, at most {point['upper_pct']:+.2f}%){added}"
        )
    verdict = (
        f"reached with {result['confidence']:.0%} confidence"
        if result["reached"]
        else f"not reached: best {result['best_reachable_pct']:+.2f}%"
    )
    holdout = result["holdout"]
    lines += [
        f"target {verdict} with {len(result['skip_modules'])} Linears ({result['float_bytes'] / MB:.1f} MB) in float",
        f"held-out {result['holdout_tokens']:,} tokens: baseline {holdout['baseline']:.3f}, {result['method']} "
        f"{holdout['quantized']:.3f}, with the list {holdout['with_skip_list']:.3f} ({holdout['change_pct']:+.2f}%)",
    ]
    for tool, names in result["forms"].items():
        lines.append(f"{tool}: {names}")
    lines += [f"note: {note}" for note in result["notes"]]
    if result["skip_modules"]:
        lines.append(
            f"export it: int8wb export --method {result['method']} --skip-modules {','.join(result['skip_modules'])}"
        )
    return "\n".join(lines)
