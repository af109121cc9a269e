"""`int8wb scan`: find the outlier feature dimensions of every Linear input, and which recur across layers."""

from __future__ import annotations

from typing import Any

import numpy as np

from engine.cli._common import model_options, print_json, run_scan, scan_options, session_with_model
from engine.vocabulary import KIND_LABELS


def add_parser(subparsers) -> None:
    scan = subparsers.add_parser("scan", help="find the outlier feature dimensions of every Linear input")
    model_options(scan)
    scan_options(scan, tokens_flag="--tokens")
    scan.set_defaults(func=cmd_scan)


def cmd_scan(args) -> int:
    session = session_with_model(args)
    payload = run_scan(session, args)
    if args.json:
        print_json(
            {
                "threshold": payload["threshold"],
                "tokens": payload["tokens"],
                "report": payload["report"],
                "layers": [_layer_summary(layer, payload["threshold"]) for layer in payload["layers"]],
            }
        )
    else:
        print(format_scan_report(payload))
    return 0


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
        "name": layer["name"],
        "layer": layer["layer"],
        "kind": layer["kind"],
        "absmax_max": float(layer["absmax"].max()),
        "outlier_dims": dims.tolist(),
        "outlier_token_fraction": (layer["count_over"][dims] / max(layer["n_tokens"], 1)).round(6).tolist(),
    }
