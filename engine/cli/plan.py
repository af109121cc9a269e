"""`int8wb plan`: how many GPUs a model needs in FP16, INT8 and LLM.int8, every term shown.

int8wb plan --preset llama-2-70b --context 4096 --batch 1
int8wb plan --config path/to/config.json --json
int8wb plan --list-presets
int8wb plan --largest-on 8xA100-40GB --among opt-6.7b,opt-13b,opt-30b,opt-66b,opt-175b,bloom-176b
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from int8wb.engine.cli import _common
from int8wb.engine.errors import BadInput
from int8wb.engine.vocabulary import FLOAT_BYTES, GPUS, METHOD_LABELS


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register `plan` and its options; `main` runs it."""
    from int8wb.engine.planning.planner import DEFAULT_OUTLIER_FRACTION, DEFAULT_USABLE_FRACTION, PLAN_METHODS

    parser = _common.documented_command(
        subparsers, "plan", help="GPUs needed for a model in FP16 / INT8 / LLM.int8, every term shown", doc=__doc__
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", metavar="PATH", help="a config.json, or a model directory holding one")
    source.add_argument("--preset", metavar="NAME", help="a built-in architecture (see --list-presets)")
    source.add_argument("--list-presets", action="store_true", help="list the built-in architectures")
    source.add_argument("--largest-on", metavar="COUNTxGPU", help="the largest preset that fits, e.g. 8xA100-40GB")
    parser.add_argument("--among", metavar="NAMES", help="with --largest-on: comma-separated presets to choose from")
    parser.add_argument("--context", type=int, default=4096, help="tokens per sequence (default 4096)")
    parser.add_argument("--batch", type=int, default=1, help="sequences at once (default 1)")
    parser.add_argument("--dtype", choices=sorted(FLOAT_BYTES), default="float16", help="floating-point dtype")
    for flag, default, meaning in (
        ("--outlier-fraction", DEFAULT_OUTLIER_FRACTION, "LLM.int8: fraction of input columns kept in floating point"),
        ("--usable-fraction", DEFAULT_USABLE_FRACTION, "fraction of each card the plan may fill"),
    ):
        parser.add_argument(flag, type=float, default=default, help=f"{meaning} (default {default})")
    parser.add_argument("--overhead-gib", type=float, default=1.0, help="runtime overhead per GPU in GiB (default 1)")
    parser.add_argument(
        "--attention",
        choices=("sdpa", "eager"),
        default="sdpa",
        help="eager attention materializes the (context x context) scores",
    )
    parser.add_argument(
        "--logits",
        choices=("last", "all"),
        default="last",
        help="logits for the last position (generation) or all (evaluation)",
    )
    parser.add_argument("--method", action="append", choices=PLAN_METHODS, help="only this method (repeatable)")
    parser.add_argument("--gpu", action="append", choices=sorted(GPUS), help="only this card (repeatable)")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    parser.set_defaults(func=main)
    return parser


def main(args: argparse.Namespace) -> int:
    """Print the plan (or the presets, or the largest that fits); a `BadInput` goes to `int8wb`'s one-line error."""
    from int8wb.engine.planning import plan_memory, presets
    from int8wb.engine.task import Task

    if args.list_presets:
        rows = presets.list_presets()
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            for row in rows:
                print(f"{row['name']:14s} {row['parameters'] / 1e9:8.2f} B  {row['label']}  ({row['source']})")
        return 0
    params: dict[str, Any] = {
        "context": args.context,
        "batch": args.batch,
        "dtype": args.dtype,
        "outlier_fraction": args.outlier_fraction,
        "usable_fraction": args.usable_fraction,
        "overhead_gib": args.overhead_gib,
        "attention": args.attention,
        "logits": args.logits,
        "methods": args.method,
        "gpus": args.gpu,
    }
    if args.largest_on:
        result = largest_on(args.largest_on, args.among, params)
        print(json.dumps(result, indent=2) if args.json else _render_largest(result))
        return 0
    params.update({"config": args.config, "preset": args.preset})
    result = plan_memory.run(params, Task())
    print(json.dumps(result, indent=2) if args.json else render(result))
    return 0


def largest_on(spec: str, among: str | None, params: dict[str, Any]) -> dict[str, Any]:
    """For each method, the preset with the most parameters that fits on COUNT cards of a kind."""
    from int8wb.engine.planning import gpus, plan_memory, planner, presets

    count_text, _, gpu = spec.partition("x")
    if not count_text.isdigit() or not gpu:
        raise BadInput(f"--largest-on wants COUNTxGPU such as 8xA100-40GB, got {spec!r}")
    count = int(count_text)
    gpus.check_gpu(gpu)
    names = [n.strip() for n in among.split(",") if n.strip()] if among else [r["name"] for r in presets.list_presets()]
    candidates = [presets.from_config_dict(presets.preset_config(name), name)[:2] for name in names]
    settings = plan_memory.settings_from_params(params)
    methods = params.get("methods") or planner.PLAN_METHODS
    largest = {}
    for method in methods:
        arch = gpus.largest_fitting(candidates, planner.check_method(method), settings, gpu, count)
        largest[method] = arch.name if arch else None
    return {
        "gpu": gpu,
        "count": count,
        "candidates": names,
        "largest": largest,
        "settings": {
            "context": settings.context,
            "batch": settings.batch,
            "dtype": settings.dtype,
            "usable_fraction": settings.usable_fraction,
        },
    }


def _gib(value: int | None) -> str:
    """Bytes in GiB, or in MiB / KiB / bytes when smaller, so small models show their terms too."""
    if value is None:
        return "-"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(value) >= size:
            return f"{value / size:.2f} {unit}"
    return f"{value} bytes"


def render(result: dict[str, Any]) -> str:
    """The plan as text: architecture, settings, then per method every term and the GPU counts."""
    arch, s = result["architecture"], result["settings"]
    lines = [
        f"{arch['name']}: {arch['parameters']:,} parameters, {arch['num_layers']} layers, hidden {arch['hidden_size']}, "
        f"{arch['num_heads']} heads / {arch['num_kv_heads']} KV heads x {arch['head_dim']}, "
        f"intermediate {arch['intermediate_size']}, vocabulary {arch['vocab_size']}",
        f"batch {s['batch']} x context {s['context']}, {s['dtype']}, outlier fraction {s['outlier_fraction']}, "
        f"usable fraction {s['usable_fraction']}, runtime overhead {_gib(s['overhead_bytes'])} per GPU",
    ]
    if arch.get("num_experts"):
        lines.append(
            f"mixture of experts: {arch['num_experts']} experts per layer, {arch['experts_per_token']} per token; "
            f"{arch['active_parameters']:,} parameters active per token, all {arch['parameters']:,} in memory"
        )
    lines += [f"note: {note}" for note in result["notes"]]
    lines.append(result["layer_by_layer"]["line"])
    for method in result["methods"]:
        lines.append("")
        lines.append(f"{method['method']} ({METHOD_LABELS[method['method']]})")
        lines.append(f"  weights       {_gib(method['weights']['bytes'])}")
        lines += [f"    {key:22s} {_gib(value)}" for key, value in method["weights"]["terms"].items()]
        lines.append(f"  KV cache      {_gib(method['kv_cache']['bytes'])}")
        lines.append(f"  workspace     {_gib(method['workspace']['bytes'])} per GPU")
        lines += [f"    {key:22s} {_gib(value)}" for key, value in method["workspace"]["terms"].items()]
        for card in method["gpus"]:
            head = f"  {card['gpu']:11s} budget {_gib(card['budget_per_gpu_bytes'])}/GPU = {_gib(card['usable_bytes'])} usable"
            head += f" - {_gib(card['overhead_bytes'])} overhead - {_gib(card['workspace_bytes'])} workspace"
            if card["needed"] is None:
                lines.append(f"{head}: does not fit ({card['why_not']})")
            else:
                lines.append(
                    f"{head}: {card['needed']} GPUs (weights+KV {_gib(card['state_bytes'])}, "
                    f"{card['needed_if_divisible']} if layers could be split; holds up to context "
                    f"{card['largest_context_on_needed']} at batch {s['batch']})"
                )
        lines += render_decode(method)
    return "\n".join(lines)


def _gb(value: float) -> str:
    """Bytes in decimal GB (as bandwidths are quoted), or MB / KB / bytes when smaller."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.2f} {unit}"
    return f"{value:.0f} bytes"


def render_decode(method: dict[str, Any]) -> list[str]:
    """One method's decode throughput: bytes per step by term, tokens/s per card, the ratio to the baseline."""
    decode = method.get("decode")
    if not decode:
        return []
    lines = [
        f"  decode at batch {decode['batch']}, context {decode['context']}: {_gb(decode['bytes_per_step'])} read per step, "
        f"{_gb(decode['bytes_per_token'])} per generated token"
    ]
    lines += [f"    {key:22s} {_gb(value)}" for key, value in decode["terms"].items()]
    for card in decode["gpus"]:
        bound = card["bound_batch"]
        lines.append(
            f"  {card['gpu']:11s} {card['bandwidth_bytes_per_s'] / 1e9:,.0f} GB/s: "
            f"{card['tokens_per_s_per_sequence']:,.1f} tokens/s per sequence, {card['tokens_per_s_batch']:,.1f} for the batch; "
            + (
                f"compute-bound from batch {bound}"
                if bound
                else "bandwidth-bound at any batch (KV reads outlast compute)"
            )
            + f" (weights alone: from batch {card['bound_batch_without_kv']})"
        )
    against = decode.get("against_baseline")
    if against:
        steps = ", ".join(f"{step['term']} {step['speedup_so_far']:.2f}x" for step in against["steps"])
        lines.append(f"  {against['speedup']:.2f}x fewer bytes per token than the baseline; adding terms: {steps}")
    return lines


def _render_largest(result: dict[str, Any]) -> str:
    s = result["settings"]
    lines = [
        f"largest preset on {result['count']} x {result['gpu']} at batch {s['batch']} x context {s['context']}, "
        f"{s['dtype']}, usable fraction {s['usable_fraction']}:"
    ]
    lines += [f"  {method:14s} {name or 'none fits'}" for method, name in result["largest"].items()]
    return "\n".join(lines)
