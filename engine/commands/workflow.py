"""`int8wb scan | quantize | eval | demo`: the headless workflow on one model.

Every command loads the model (`--model`, default: the embedded SmolLM2-135M),
and runs the same `Session` methods the engine server runs for the GUI.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import numpy as np

from engine.commands._progress import ProgressBarTask
from engine.int8_linear import METHODS
from engine.layers import KIND_LABELS

DEFAULT_METHODS = "absmax-tensor,vectorwise,llm-int8,weight-only"


def add_parser(subparsers) -> None:
    scan = subparsers.add_parser("scan", help="find the outlier feature dimensions of every Linear input")
    model_options(scan)
    scan_options(scan, tokens_flag="--tokens")
    scan.set_defaults(func=cmd_scan)

    quantize = subparsers.add_parser("quantize", help="quantize with one or more methods and report sizes")
    model_options(quantize)
    scan_options(quantize, tokens_flag="--calibration-tokens")
    quantize.add_argument("--methods", default=DEFAULT_METHODS, help=f"comma-separated, from: {', '.join(METHODS)}")
    quantize.set_defaults(func=cmd_quantize)

    for name, help_text in (
        ("eval", "quantize, then compare perplexity against the floating-point baseline"),
        ("demo", "the whole workflow on the default model: scan report and the comparison table"),
    ):
        command = subparsers.add_parser(name, help=help_text)
        model_options(command)
        scan_options(command, tokens_flag="--calibration-tokens")
        command.add_argument("--methods", default=DEFAULT_METHODS, help=f"comma-separated, from: {', '.join(METHODS)}")
        command.add_argument("--tokens", type=int, default=8192, help="evaluation tokens (default 8192)")
        command.add_argument("--window", type=int, default=512, help="tokens per evaluation window (default 512)")
        command.set_defaults(func=cmd_eval if name == "eval" else cmd_demo)


def model_options(parser) -> None:
    parser.add_argument("--model", default=None, help="model directory, GGUF file or hub id (default: embedded)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N (default: CUDA when present)")
    parser.add_argument("--corpus", default=None, help="UTF-8 text file (default: Python's pydoc topics)")
    parser.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def scan_options(parser, tokens_flag: str) -> None:
    parser.add_argument("--threshold", type=float, default=6.0, help="outlier threshold on |x| (default 6.0)")
    parser.add_argument(tokens_flag, dest="calibration_tokens", type=int, default=4096,
                        help="calibration tokens (default 4096)")
    parser.add_argument("--seq-len", type=int, default=512, help="tokens per calibration sequence (default 512)")


def session_with_model(args):
    """A session with the model loaded, after checking the cheap arguments (no 20 s load before a typo)."""
    from engine.corpus import load_split
    from engine.scan import check_threshold
    from engine.session import Session

    check_threshold(args.threshold)
    load_split(args.corpus)
    if hasattr(args, "methods"):
        _parse_methods(args.methods)
    session = Session()
    task = ProgressBarTask("load", enabled=not args.quiet)
    info = session.load_model({"model": args.model, "device": args.device}, task)
    task.finish()
    if not args.json:
        print(f"model: {info['name']} ({info['architecture']}, {info['parameters']:,} parameters, "
              f"{info['device']}, {info['dtype']})", file=sys.stderr)
        for note in info["notes"]:
            print(f"note: {note}", file=sys.stderr)
    return session


def run_scan(session, args) -> dict[str, Any]:
    task = ProgressBarTask("scan", enabled=not args.quiet)
    result = session.scan(
        {"tokens": args.calibration_tokens, "seq_len": args.seq_len, "threshold": args.threshold,
         "corpus": args.corpus},
        task,
    )
    task.finish()
    return result


def run_quantize(session, args, methods: list[str]) -> dict[str, Any]:
    task = ProgressBarTask("quantize", enabled=not args.quiet)
    result = session.quantize({"methods": methods, "threshold": args.threshold}, task)
    task.finish()
    return result


def _parse_methods(text: str) -> list[str]:
    from engine.quantize import check_methods

    return check_methods(text)


def cmd_scan(args) -> int:
    session = session_with_model(args)
    payload = run_scan(session, args)
    if args.json:
        print_json({"threshold": payload["threshold"], "tokens": payload["tokens"], "report": payload["report"],
                     "layers": [_layer_summary(layer, payload["threshold"]) for layer in payload["layers"]]})
    else:
        print(format_scan_report(payload))
    return 0


def cmd_quantize(args) -> int:
    session = session_with_model(args)
    methods = _parse_methods(args.methods)
    if "llm-int8" in methods:
        run_scan(session, args)
    result = run_quantize(session, args, methods)
    if args.json:
        print_json(result)
    else:
        print(f"{'method':<18}{'INT8 MB':>10}{'float MB':>10}{'total MB':>10}{'outlier dims':>14}")
        for row in result["models"]:
            print(f"{row['method']:<18}{row['int8_bytes'] / 1e6:>10.1f}{row['float_bytes'] / 1e6:>10.1f}"
                  f"{row['total_bytes'] / 1e6:>10.1f}{row['outlier_dims']:>14,}")
    return 0


def cmd_eval(args, show_scan: bool = False) -> int:
    from engine.evaluate import format_table

    session = session_with_model(args)
    methods = _parse_methods(args.methods)
    scan_payload = run_scan(session, args) if ("llm-int8" in methods or show_scan) else None
    run_quantize(session, args, methods)
    task = ProgressBarTask("evaluate", enabled=not args.quiet)
    result = session.evaluate({"tokens": args.tokens, "window": args.window, "corpus": args.corpus}, task)
    task.finish()
    if args.json:
        print_json({"scan_report": scan_payload["report"] if scan_payload else None, **result})
        return 0
    if show_scan and scan_payload:
        print(format_scan_report(scan_payload))
        print()
    print(format_table(result))
    return 0


def cmd_demo(args) -> int:
    return cmd_eval(args, show_scan=True)


def format_scan_report(payload: dict[str, Any]) -> str:
    """Per layer type: how many dimensions exceed the threshold, and which ones recur across layers."""
    lines = [f"outlier dimensions at |x| > {payload['threshold']:g} over {payload['tokens']:,} calibration tokens"]
    for kind, entry in payload["report"].items():
        lines.append(
            f"  {KIND_LABELS[kind]:<26} {entry['mean_outlier_dims_per_layer']:6.1f} dims per layer, "
            f"{entry['outlier_dims_any_layer']:5d} distinct over {entry['layers']} layers"
        )
        for top in entry["top_dims"]:
            lines.append(
                f"      dim {top['dim']:>5}: over the threshold in {top['layer_fraction']:5.0%} of layers, "
                f"on {top['token_fraction_where_over']:6.1%} of tokens there"
            )
    return "\n".join(lines)


def _layer_summary(layer: dict[str, Any], threshold: float) -> dict[str, Any]:
    dims = np.flatnonzero(layer["absmax"] > threshold)
    return {
        "name": layer["name"], "layer": layer["layer"], "kind": layer["kind"],
        "absmax_max": float(layer["absmax"].max()),
        "outlier_dims": dims.tolist(),
        "outlier_token_fraction": (layer["count_over"][dims] / max(layer["n_tokens"], 1)).round(6).tolist(),
    }


def print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=1, default=_json_default)
    sys.stdout.write("\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")
