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
                    _layer_summary(name, layer, payload["threshold"], payload["token_axis"]["seq_len"])
                    for layer in payload["layers"]
                    for name in layer["names"]
                ],
                "token_axis": token_axis_summary(payload),
                **({"errors": payload["errors"]} if "errors" in payload else {}),
            }
        )
    else:
        print(format_scan_report(payload))
        print()
        print(format_token_axis(payload["token_axis"]))
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


def token_axis_summary(payload: dict[str, Any], top: int = 5) -> dict[str, Any]:
    """The token axis as JSON: per residual-stream layer its largest |x|, median |x|, largest |x| per token
    position (over the calibration sequences) and its `top` dimensions; the massive activations with their
    criterion; the precision alarms."""
    axis = payload["token_axis"]
    residual = []
    for entry in axis["residual"]:
        ranked = np.argsort(-entry["dim_absmax"], kind="stable")[:top]
        residual.append(
            {
                "layer": entry["layer"],
                "max_abs": float(entry["token_absmax"].max()),
                "median_abs": entry["median_abs"],
                "position_max_abs": entry["token_absmax"].max(axis=0).round(4).tolist(),
                "top_dims": [{"dim": int(d), "max_abs": float(entry["dim_absmax"][d])} for d in ranked],
            }
        )
    return {
        "seq_len": axis["seq_len"],
        "first_sequence_tokens": axis["tokens"],
        "residual": residual,
        "massive_criterion": axis["massive_criterion"],
        "massive_activations": axis["massive_activations"],
        "precision_alarms": axis["precision_alarms"],
    }


def format_token_axis(axis: dict[str, Any], shown: int = 10) -> str:
    """The massive activations (the largest per layer, `shown` layers at most) and the precision alarms."""
    massive = axis["massive_activations"]
    lines = [f"massive activations in the residual stream: {len(massive)} (criterion: {axis['massive_criterion']})"]
    layers = sorted({m["layer"] for m in massive})
    for layer in layers[:shown]:
        m = next(m for m in massive if m["layer"] == layer)
        lines.append(
            f"  layer {layer:>3}: dim {m['dim']:>5} = {m['value']:,.0f} ({m['ratio']:,.0f}x the median) on "
            f"{m['token']!r}, position {m['position']} of sequence {m['sequence']}, and "
            f"{sum(1 for x in massive if x['layer'] == layer) - 1} more"
        )
    if len(layers) > shown:
        lines.append(f"  ... and {len(layers) - shown} more layers (--json lists them all)")
    alarms = axis["precision_alarms"]
    lines.append("precision: " + ("no alarm" if not alarms else f"{len(alarms)} alarm(s)"))
    lines += [f"  {alarm['message']}" for alarm in alarms]
    return "\n".join(lines)


def _layer_summary(name: str, layer: dict[str, Any], threshold: float, seq_len: int) -> dict[str, Any]:
    """One Linear's entry: each Linear that reads a shared input (q/k/v, gate/up) is listed with its statistics."""
    dims = np.flatnonzero(layer["absmax"] > threshold)
    return {
        "name": name,
        "layer": layer["layer"],
        "kind": layer["kind"],
        "absmax_max": float(layer["absmax"].max()),
        "outlier_dims": dims.tolist(),
        "outlier_token_fraction": (layer["count_over"][dims] / max(layer["n_tokens"], 1)).round(6).tolist(),
        "output_max_abs": layer["output_absmax"].get(name),
        **_position_maxima(layer, seq_len),
        **({"sqnr_db": layer["sqnr_db"][name]} if "sqnr_db" in layer else {}),
    }


def _position_maxima(layer: dict[str, Any], seq_len: int) -> dict[str, Any]:
    """The input's largest |x| per token position, over the calibration sequences (none for an expert)."""
    if layer["token_absmax"] is None:
        return {}
    return {"position_max_abs": layer["token_absmax"].reshape(-1, seq_len).max(axis=0).round(4).tolist()}
