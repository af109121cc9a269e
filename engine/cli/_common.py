"""What the commands share: their registration; for the model commands (scan, quantize, eval, demo, export, ...)
options, loading, the scan and quantize steps, progress and output.

Every model command loads the model (`--model`, default: the embedded SmolLM2-135M)
and runs the same `Session` methods the engine server runs for the GUI.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import numpy as np

from int8wb.engine.cli._progress import ProgressBarTask
from int8wb.engine.vocabulary import (
    ALL_GPUS,
    DEFAULT_ALPHA,
    DEFAULT_THRESHOLD,
    METHODS,
    NEEDS_SCAN,
    OFFLOAD_MODES,
    TICKED_METHODS,
)

DEFAULT_METHODS = ",".join(TICKED_METHODS)


def documented_command(subparsers, name: str, help: str, doc: str | None) -> argparse.ArgumentParser:
    """Register command `name` whose `--help` shows its module's docstring `doc` (examples included) as written."""
    return subparsers.add_parser(name, help=help, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def model_options(parser) -> None:
    parser.add_argument("--model", default=None, help="model directory, GGUF file or hub id (default: embedded)")
    parser.add_argument(
        "--device",
        default="auto",
        help=f"cpu, cuda, cuda:N, or {ALL_GPUS} to spread the model over every GPU (default: CUDA when present)",
    )
    parser.add_argument("--corpus", default=None, help="UTF-8 text file (default: Python's pydoc topics)")
    parser.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument(
        "--offload",
        choices=OFFLOAD_MODES,
        default="auto",
        help="none: load the whole model; disk: run it one decoder layer at a time, reading each from disk; "
        "auto (default): disk when the planner's estimate exceeds the free memory, and say why",
    )


def scan_options(parser, tokens_flag: str) -> None:
    parser.add_argument(
        "--threshold",
        type=float,
        default=DEFAULT_THRESHOLD,
        help=f"outlier threshold on |x| (default {DEFAULT_THRESHOLD})",
    )
    parser.add_argument(
        tokens_flag, dest="calibration_tokens", type=int, default=4096, help="calibration tokens (default 4096)"
    )
    parser.add_argument("--seq-len", type=int, default=512, help="tokens per calibration sequence (default 512)")


def alpha_option(parser) -> None:
    parser.add_argument(
        "--alpha",
        type=float,
        default=DEFAULT_ALPHA,
        help=f"SmoothQuant's migration strength from 0 to 1 (default {DEFAULT_ALPHA})",
    )


def quantizing_options(parser) -> None:
    """What every command that quantizes takes: the model, its calibration scan and SmoothQuant's alpha."""
    model_options(parser)
    scan_options(parser, tokens_flag="--calibration-tokens")
    alpha_option(parser)


def methods_option(parser) -> None:
    parser.add_argument("--methods", default=DEFAULT_METHODS, help=f"comma-separated, from: {', '.join(METHODS)}")


def params_from(args, *names: str) -> dict[str, Any]:
    """The request params a command passes on unchanged: each option of `names` under its own name."""
    return {name: getattr(args, name) for name in names}


def with_progress(args, label: str, job, params: dict[str, Any]) -> Any:
    """`job(params, task)` (a `Session` method) under a progress bar named `label` (none with --quiet)."""
    task = ProgressBarTask(label, enabled=not args.quiet)
    result = job(params, task)
    task.finish()
    return result


def print_result(args, result: Any, format_text) -> int:
    """`result` as JSON with --json, else as `format_text(result)` reads; the command's exit status."""
    if args.json:
        print_json(result)
    else:
        print(format_text(result))
    return 0


def needs_scan(methods: list[str]) -> bool:
    """Whether any of `methods` takes something from a calibration scan."""
    return any(method in NEEDS_SCAN for method in methods)


def session_with_model(args):
    """A session with the model loaded, after checking the cheap arguments (no 20 s load before a typo)."""
    from int8wb.engine.model.corpus import load_split
    from int8wb.engine.process.session import Session
    from int8wb.engine.vocabulary import check_alpha, check_threshold

    check_threshold(args.threshold)
    check_alpha(getattr(args, "alpha", DEFAULT_ALPHA))
    load_split(args.corpus)
    if hasattr(args, "methods"):
        parse_methods(args.methods)
    session = Session()
    info = with_progress(args, "load", session.load_model, params_from(args, "model", "device", "offload"))
    if not args.json:
        print(
            f"model: {info['name']} ({info['architecture']}, {info['parameters']:,} parameters, "
            f"{info['device']}, {info['dtype']})",
            file=sys.stderr,
        )
        print(f"INT8 product: {info['int8_path']}", file=sys.stderr)
        for note in info["notes"]:
            print(f"note: {note}", file=sys.stderr)
        if info["offload"]["reason"] not in ("", "asked for"):
            print(f"note: {info['offload']['reason']}", file=sys.stderr)
    return session


def scan_params(args) -> dict[str, Any]:
    return {
        "tokens": args.calibration_tokens,
        "seq_len": args.seq_len,
        "threshold": args.threshold,
        "corpus": args.corpus,
        "error_methods": args.methods if getattr(args, "errors", False) else None,
        "error_tokens": getattr(args, "error_tokens", None),
        "alpha": getattr(args, "alpha", None),
    }


def quantize_params(args, methods: list[str]) -> dict[str, Any]:
    return {
        "methods": methods,
        "threshold": args.threshold,
        "alpha": args.alpha,
        "skip_modules": getattr(args, "skip_modules", None),
    }


def run_scan(session, args) -> dict[str, Any]:
    return with_progress(args, "scan", session.scan, scan_params(args))


def run_quantize(session, args, methods: list[str]) -> dict[str, Any]:
    return with_progress(args, "quantize", session.quantize, quantize_params(args, methods))


def run_one_pass(session, args, methods: list[str], **parts: Any) -> dict[str, Any]:
    """Scan (when a method needs it, or `scan=True`), quantize `methods` and the given `parts` (evaluate,
    export params) in one layer-by-layer pass over a model whose weights stay on disk."""
    wants_scan = parts.pop("scan", False) or needs_scan(methods)
    params = {**quantize_params(args, methods), "scan": scan_params(args) if wants_scan else None}
    return with_progress(args, "layer by layer", session.run_pass, {**params, **parts})


def print_warnings(rows: list[dict[str, Any]]) -> None:
    """Each result's warnings (a decoder mostly left in floating point) on stderr, also under --json."""
    for row in rows:
        for warning in row.get("warnings", []):
            print(f"warning: {warning}", file=sys.stderr)


def parse_methods(text: str) -> list[str]:
    from int8wb.engine.quant.quantize import check_methods

    return check_methods(text)


def print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=1, default=_json_default)
    sys.stdout.write("\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")
