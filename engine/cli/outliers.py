"""`int8wb outliers --super-weights`: find the super weight, zero it against a control, and (with --compare)
measure what keeping it in floating point buys each method (engine.measure.super_weight)."""

from __future__ import annotations

from typing import Any

from int8wb.engine.cli import _common
from int8wb.engine.cli._progress import ProgressBarTask
from int8wb.engine.errors import BadInput
from int8wb.engine.measure.super_weight import SuperWeightSettings
from int8wb.engine.vocabulary import DEFAULT_THRESHOLD

KEPT_SUFFIX = " + super weight"


def add_parser(subparsers) -> None:
    command = subparsers.add_parser("outliers", help="the super weight: find it, zero it against a control, keep it")
    _common.model_options(command)
    command.add_argument(
        "--threshold", type=float, default=DEFAULT_THRESHOLD, help="LLM.int8()'s threshold in --compare (default 6.0)"
    )
    command.add_argument(
        "--super-weights",
        action="store_true",
        help="find each down projection's super weight candidate and measure perplexity with it zeroed",
    )
    defaults = SuperWeightSettings()
    command.add_argument(
        "--candidates", type=int, default=defaults.candidates, help=f"candidates to try (default {defaults.candidates})"
    )
    command.add_argument(
        "--find-tokens",
        type=int,
        default=defaults.find_tokens,
        help=f"calibration tokens the spikes are read from (default {defaults.find_tokens})",
    )
    command.add_argument(
        "--tokens",
        type=int,
        default=defaults.tokens,
        help=f"evaluation tokens per perplexity (default {defaults.tokens})",
    )
    command.add_argument(
        "--window", type=int, default=defaults.window, help=f"tokens per evaluation window (default {defaults.window})"
    )
    command.add_argument(
        "--compare",
        metavar="METHODS",
        help="then quantize each of these methods without and with the found super weights kept in floating point, "
        "and compare their perplexities (e.g. absmax-tensor,vectorwise)",
    )
    command.set_defaults(func=cmd_outliers)


def cmd_outliers(args) -> int:
    if not args.super_weights:
        raise BadInput("say what to find: int8wb outliers --super-weights")
    methods = _common.parse_methods(args.compare) if args.compare else []
    if _common.needs_scan(methods):
        raise BadInput("--compare takes methods that need no scan (absmax-tensor, vectorwise, weight-only, q8_0, ...)")
    params = _common.params_from(args, "candidates", "find_tokens", "tokens", "window", "corpus")
    SuperWeightSettings.from_params(params)  # refuse a bad number before the load
    session = _common.session_with_model(args)
    result = _common.with_progress(args, "super weights", session.find_super_weights, params)
    if methods:
        result["comparison"] = compare_kept(session, args, methods)
    return _common.print_result(args, result, format_super_weights)


def compare_kept(session, args, methods: list[str]) -> dict[str, Any]:
    """Each method quantized as it is and with the found super weights kept, evaluated side by side."""
    from int8wb.engine.measure import evaluate

    variants = {}
    for method in methods:
        for keep in (False, True) if session.super_weights["super_weights"] else (False,):
            params = {"methods": [method], "threshold": args.threshold, "keep_super_weights": keep}
            _common.with_progress(args, f"quantize {method}", session.quantize, params)
            variants[method + (KEPT_SUFFIX if keep else "")] = session.quantized[method]
    task = ProgressBarTask("evaluate", enabled=not args.quiet)
    eval_params = {"tokens": args.tokens, "window": args.window, "corpus": args.corpus}
    result = evaluate.run(eval_params, task, session.require_model(), variants)
    task.finish()
    result.pop("token_detail", None)
    return result


def format_super_weights(result: dict[str, Any]) -> str:
    """The candidates and the experiment's perplexities, the verdict with its criterion, and any comparison."""
    lines = [
        f"super weight candidates from {result['find_tokens']} calibration tokens; perplexity on "
        f"{result['tokens']:,} tokens of {result['corpus']}: {result['baseline']:.3f} as it is",
        f"{'Linear':<34}{'[row, col]':>13}{'weight':>9}{'input spike':>13}{'x median':>10}{'writes':>10}"
        f"{'zeroed':>10}{'control':>10}",
    ]
    for c in result["candidates"]:
        crossing = f"[{c['row']}, {c['col']}]"
        lines.append(
            f"{c['module']:<34}{crossing:>13}{c['weight']:>9.4g}{c['input_spike']:>13,.1f}"
            f"{c['input_ratio']:>10,.0f}{c['output_spike']:>10,.0f}{c['zeroed']:>10.3f}{c['control']:>10.3f}"
            + ("  <- super weight" if c["super_weight"] else "")
        )
    lines += [
        "zeroed: perplexity with that weight set to 0; control: with the largest other weight of the Linear set to 0",
        f"criterion: {result['criterion']}",
        result["verdict"],
    ]
    comparison = result.get("comparison")
    if comparison:
        lines.append(f"keeping the super weights in floating point, on {comparison['settings']['tokens']:,} tokens:")
        for row in comparison["rows"]:
            lines.append(f"  {row['method']:<32}{row['perplexity']:>10.3f}{row['relative_change']:>+10.2%}")
    return "\n".join(lines)
