"""`int8wb scan`: find the outlier feature dimensions of every Linear input, and which recur across layers."""

from __future__ import annotations

from typing import Any

import numpy as np

from int8wb.engine.cli import _common
from int8wb.engine.quant.layer_errors import DEFAULT_ERROR_TOKENS
from int8wb.engine.vocabulary import KIND_LABELS, METHODS


def add_parser(subparsers) -> None:
    scan = subparsers.add_parser("scan", help="find the outlier feature dimensions of every Linear input")
    _common.model_options(scan)
    _common.scan_options(scan, tokens_flag="--tokens")
    scan.add_argument(
        "--errors", action="store_true", help="also measure each method's output error (SQNR) on every Linear"
    )
    scan.add_argument(
        "--methods", default=",".join(METHODS), help="with --errors: comma-separated methods (default: all)"
    )
    scan.add_argument(
        "--error-tokens",
        type=int,
        default=DEFAULT_ERROR_TOKENS,
        help=f"with --errors: calibration tokens per Linear the error pass uses (default {DEFAULT_ERROR_TOKENS})",
    )
    _common.alpha_option(scan)
    scan.set_defaults(func=cmd_scan)


def cmd_scan(args) -> int:
    session = _common.session_with_model(args)
    payload = _common.run_scan(session, args)
    if args.json:
        _common.print_json(
            {
                "threshold": payload["threshold"],
                "tokens": payload["tokens"],
                "report": payload["report"],
                "layers": [
                    _layer_summary(name, layer, payload["threshold"])
                    for layer in payload["layers"]
                    for name in layer["names"]
                ],
                **({"errors": payload["errors"]} if "errors" in payload else {}),
            }
        )
    else:
        print(format_scan_report(payload))
        if "errors" in payload:
            print()
            print(format_error_table(payload))
    return 0


def format_error_table(payload: dict[str, Any]) -> str:
    """Per Linear, each method's output SQNR in dB (higher is better), then the per-method summary."""
    methods = payload["error_methods"]
    lines = [
        "output SQNR in dB per Linear, on its floating-point input (higher is better; None: exact)",
        f"{'layer':>5} {'Linear':<16} {'outliers':>8}" + "".join(f"{m:>18}" for m in methods),
    ]
    for layer in payload["layers"]:
        outliers = int((layer["absmax"] > payload["threshold"]).sum())
        for name in layer["names"]:
            cells = "".join(f"{_db(layer['sqnr_db'][name][m]):>18}" for m in methods)
            lines.append(f"{layer['layer']:>5} {name.rsplit('.', 1)[-1]:<16} {outliers:>8}{cells}")
    lines.append("")
    for method, entry in payload["errors"].items():
        correlation = entry["loss_vs_outliers"]
        lines.append(
            f"{method:<18} median {_db(entry['median_sqnr_db'])} dB, worst {entry['worst_linear']}, "
            f"rank correlation of its loss with outlier columns "
            f"{'n/a' if correlation is None else f'{correlation:+.2f}'}"
        )
    return "\n".join(lines)


def _db(value: float | None) -> str:
    return "exact" if value is None else f"{value:.1f}"


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


def _layer_summary(name: str, layer: dict[str, Any], threshold: float) -> dict[str, Any]:
    """One Linear's entry: each Linear that reads a shared input (q/k/v, gate/up) is listed with its statistics."""
    dims = np.flatnonzero(layer["absmax"] > threshold)
    return {
        "name": name,
        "layer": layer["layer"],
        "kind": layer["kind"],
        "absmax_max": float(layer["absmax"].max()),
        "outlier_dims": dims.tolist(),
        "outlier_token_fraction": (layer["count_over"][dims] / max(layer["n_tokens"], 1)).round(6).tolist(),
        **({"sqnr_db": layer["sqnr_db"][name]} if "sqnr_db" in layer else {}),
    }
