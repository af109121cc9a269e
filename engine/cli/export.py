"""`int8wb export`: quantize with one method and write a checkpoint in one of the export formats.

`--format` picks who loads it (engine.vocabulary.FORMAT_LOADERS); a method the
format cannot carry is refused before the model is loaded, with the reason and
the format to use. Static `llm-int8` and `smoothquant` scan first. A
model re-opened from an export (`--model DIR`) is written again as it is.
With `--offload disk` (or `auto` when the model does not fit) the model is read
one decoder layer at a time, and the scan, the quantization and the writing of
each layer happen in one pass (engine.pipeline.layer_export).
"""

from __future__ import annotations

import sys
from typing import Any

from int8wb.engine.cli import _common
from int8wb.engine.errors import BadInput
from int8wb.engine.measure.evaluate import coverage_lines
from int8wb.engine.quant import skip_list
from int8wb.engine.vocabulary import EXPORT_FORMATS, FORMAT_LOADERS, LLM_INT8, METHODS


def add_parser(subparsers) -> None:
    command = subparsers.add_parser(
        "export",
        help="quantize and write a checkpoint: bitsandbytes safetensors (transformers; the workbench re-opens "
        "them), compressed-tensors (vLLM) or GGUF Q8_0 (llama.cpp)",
    )
    _common.quantizing_options(command)
    command.add_argument(
        "--method", default=LLM_INT8.name, choices=METHODS, help=f"quantization method (default {LLM_INT8.name})"
    )
    command.add_argument(
        "--format",
        default=EXPORT_FORMATS[0],
        choices=EXPORT_FORMATS,
        help="; ".join(f"{name}: {FORMAT_LOADERS[name]}" for name in EXPORT_FORMATS)
        + f" (default {EXPORT_FORMATS[0]})",
    )
    command.add_argument("--out", required=True, help="directory to write (must not exist or be empty)")
    command.add_argument("--overwrite", action="store_true", help="replace an existing non-empty --out directory")
    command.add_argument(
        "--max-shard-size",
        default=None,
        help="split the weights into shards past this size, as transformers does (default 50GB)",
    )
    command.add_argument(
        "--skip-modules",
        default=None,
        help="comma-separated Linears to keep in floating point: full names, a containing module (a decoder "
        "layer), or a Linear's own name for all of them (see `int8wb sensitivity`)",
    )
    command.set_defaults(func=cmd_export)


def cmd_export(args) -> int:
    from int8wb.engine.checkpoint.export import check_target, parse_size
    from int8wb.engine.checkpoint.layout import check_format

    check_format(args.format, args.method)  # refuse before a long load
    check_target(args.out, args.overwrite)
    if args.max_shard_size is not None:
        parse_size(args.max_shard_size)
    session = _common.session_with_model(args)
    export_params = _common.params_from(args, "method", "format", "out", "overwrite", "max_shard_size")
    if session.layerwise:
        _print_skip_notes(session, args)
        result = _common.run_one_pass(session, args, [args.method], export=export_params)["export"]
        return _report(args, _with_skip_forms(args, session, result))
    reopened = getattr(session.loaded, "quantized", None)
    if reopened is not None:
        if reopened.method != args.method:
            raise BadInput(
                f"{args.model} is already quantized with {reopened.method}: "
                f"export it with --method {reopened.method}, or start from the floating-point model"
            )
        if args.skip_modules:
            raise BadInput(f"{args.model} is already quantized: --skip-modules starts from the floating-point model")
    else:
        _print_skip_notes(session, args)  # a typo is refused before the scan
        if _common.needs_scan([args.method]):
            _common.run_scan(session, args)
        _common.run_quantize(session, args, [args.method])
    result = _common.with_progress(args, "export", session.export, export_params)
    return _report(args, _with_skip_forms(args, session, result))


def _print_skip_notes(session, args) -> None:
    """The names of --skip-modules that need no keeping (in floating point already), on stderr; a typo is refused."""
    for note in skip_list.notes(session.loaded.model, args.skip_modules):
        print(f"note: {note}", file=sys.stderr)


def _with_skip_forms(args, session, result: dict[str, Any]) -> dict[str, Any]:
    """With --skip-modules, the same list in the forms other tools take."""
    if args.skip_modules:
        result["skip_forms"] = skip_list.tool_forms(session.quantized[args.method].skipped)
    return result


def _report(args, result: dict[str, Any]) -> int:
    _common.print_warnings([result])
    return _common.print_result(args, result, format_export)


def format_export(result: dict[str, Any]) -> str:
    """Files written and where the bytes go, in MB (10**6 bytes)."""
    lines = [
        f"exported {result['method']} (threshold {result['threshold']:g}) as {result['format']} to {result['path']}"
    ]
    for entry in result["files"]:
        lines.append(f"  {entry['name']:<40}{entry['bytes'] / 1e6:>12.3f} MB")
    lines.append(f"  {'total on disk':<40}{result['total_bytes'] / 1e6:>12.3f} MB")
    for tool, names in result.get("skip_forms", {}).items():
        lines.append(f"{tool}: {names}")
    lines.append("size breakdown:")
    for key, value in result["breakdown"].items():
        lines.append(f"  {key:<40}{value / 1e6:>12.3f} MB")
    lines.append(f"INT8 share of the decoder's matrix weights in these files: {result['int8_share']:.1%}")
    lines += coverage_lines([result])
    lines += [f"note: {note}" for note in result.get("notes", [])]
    return "\n".join(lines)
