"""SmoothQuant's alpha curve and the format x method perplexity table on the embedded default model.

`methods`: perplexity of the baseline, vectorwise, llm-int8, weight-only, q8_0 and
smoothquant at alpha 0.0, 0.1, ..., 1.0, all on the same evaluation tokens, with
the scan of the README's table (4,096 calibration tokens, threshold 6.0); and how
much smoothing alone (alpha 0.5, before quantizing) moves the float model's logits.
`formats`: each export format written and read back by the program that loads it
(transformers + bitsandbytes, transformers + compressed-tensors decompressing to
floating point, transformers' GGUF reader), perplexity on the same tokens.

Run: .venv/bin/python bench/smoothquant_alpha.py methods --tokens 8192 --out docs/smoothquant_alpha.json
     .venv/bin/python bench/smoothquant_alpha.py formats --tokens 8192 --out docs/format_table.json
Writes the numbers as JSON (and, for `methods`, the curve as an SVG beside it). Not a timed benchmark.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import warnings
from pathlib import Path

from int8wb.engine.measure.evaluate import EvalSettings, evaluation_windows, perplexity
from int8wb.engine.process.session import Session
from int8wb.engine.task import Task

ALPHAS = [round(0.1 * i, 1) for i in range(11)]
FIXED_METHODS = ["vectorwise", "llm-int8", "weight-only", "q8_0"]
FORMAT_CELLS = [
    ("bitsandbytes", m) for m in ("absmax-tensor", "vectorwise", "llm-int8", "llm-int8-dynamic", "weight-only")
] + [("bitsandbytes", "smoothquant"), ("compressed-tensors", "vectorwise"), ("compressed-tensors", "smoothquant")]
FORMAT_CELLS += [("compressed-tensors", "weight-only"), ("gguf-q8_0", "q8_0")]


def _session() -> Session:
    session = Session()
    session.load_model({"device": "cpu"}, Task())
    session.scan({"tokens": 4096, "seq_len": 512, "threshold": 6.0}, Task())
    return session


def _ppl(model, windows) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return perplexity(model, windows, 4, Task())["perplexity"]


def run_methods(session: Session, windows) -> dict:
    import torch

    from int8wb.engine.quant import quantize, smoothing

    rows = {"baseline": _ppl(session.loaded.model, windows)}
    print(f"baseline {rows['baseline']:.4f}", flush=True)
    for method in FIXED_METHODS:
        session.quantize({"methods": [method]}, Task())
        rows[method] = _ppl(session.quantized.pop(method).model, windows)
        print(f"{method} {rows[method]:.4f}", flush=True)
    curve = []
    for alpha in ALPHAS:
        session.quantize({"methods": ["smoothquant"], "alpha": alpha}, Task())
        variant = session.quantized.pop("smoothquant")
        curve.append({"alpha": alpha, "perplexity": _ppl(variant.model, windows), **variant.smoothing})
        print(f"smoothquant alpha {alpha} {curve[-1]['perplexity']:.4f}", flush=True)
    smoothed = quantize.share_tensors_copy(session.loaded.model)
    smoothing.smooth(smoothed, session.scan_result, 0.5)
    with torch.no_grad():
        ids = windows[:2]
        expected, got = session.loaded.model(input_ids=ids).logits, smoothed(input_ids=ids).logits
    drift = float((got - expected).norm() / expected.norm())
    print(f"smoothing alone at alpha 0.5: relative logit change {drift:.2e}", flush=True)
    return {"methods": rows, "smoothquant": curve, "smoothing_alone_relative_logit_change": drift}


def run_formats(session: Session, windows) -> list[dict]:
    cells = []
    with tempfile.TemporaryDirectory() as folder:
        for fmt, method in FORMAT_CELLS:
            session.quantize({"methods": [method]}, Task())
            out = Path(folder) / f"{fmt}-{method}"
            session.export({"method": method, "format": fmt, "out": str(out)}, Task())
            summary = session.quantized.pop(method).summary()
            model = _load(fmt, out)
            sizes = {key: summary[key] for key in ("int8_bytes", "float_bytes")}
            cells.append({"format": fmt, "method": method, "perplexity": _ppl(model, windows), **sizes})
            print(cells[-1], flush=True)
            del model
    return cells


def _load(fmt: str, folder: Path):
    import torch
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if fmt == "bitsandbytes":
            return AutoModelForCausalLM.from_pretrained(folder, device_map="cpu").eval()
        if fmt == "compressed-tensors":
            config = CompressedTensorsConfig(dequantize=True)
            return AutoModelForCausalLM.from_pretrained(folder, quantization_config=config, dtype=torch.float32).eval()
        return AutoModelForCausalLM.from_pretrained(folder, gguf_file="model-q8_0.gguf", dtype=torch.float32).eval()


def write_svg(curve: list[dict], rows: dict, path: Path) -> None:
    """The alpha curve, with vectorwise, llm-int8 and the baseline as horizontal lines (no plotting library)."""
    width, height, left, bottom, top, right = 640, 360, 60, 40, 20, 150
    values = [p["perplexity"] for p in curve] + [rows[k] for k in ("baseline", "vectorwise", "llm-int8")]
    low, high = min(values) * 0.995, min(max(values), rows["vectorwise"] * 1.5) * 1.005

    def x(alpha: float) -> float:
        return left + alpha * (width - left - right)

    def y(value: float) -> float:
        value = min(value, high)
        return top + (high - value) / (high - low) * (height - top - bottom)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
        'font-size="12"><rect width="100%" height="100%" fill="white"/>',
        f'<line x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}" stroke="black"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" stroke="black"/>',
    ]
    for alpha in ALPHAS:
        parts.append(f'<text x="{x(alpha):.1f}" y="{height - bottom + 16}" text-anchor="middle">{alpha:g}</text>')
    for i in range(5):
        value = low + (high - low) * i / 4
        parts.append(f'<text x="{left - 6}" y="{y(value) + 4:.1f}" text-anchor="end">{value:.2f}</text>')
    parts.append(f'<text x="{(left + width - right) / 2}" y="{height - 6}" text-anchor="middle">alpha</text>')
    for key, colour in (("baseline", "#888"), ("vectorwise", "#d62728"), ("llm-int8", "#2ca02c")):
        parts.append(
            f'<line x1="{left}" y1="{y(rows[key]):.1f}" x2="{width - right}" y2="{y(rows[key]):.1f}" '
            f'stroke="{colour}" stroke-dasharray="5,4"/>'
            f'<text x="{width - right + 6}" y="{y(rows[key]) + 4:.1f}" fill="{colour}">{key} {rows[key]:.3f}</text>'
        )
    points = " ".join(f"{x(p['alpha']):.1f},{y(p['perplexity']):.1f}" for p in curve)
    parts.append(f'<polyline points="{points}" fill="none" stroke="#1f77b4" stroke-width="2"/>')
    for p in curve:
        parts.append(f'<circle cx="{x(p["alpha"]):.1f}" cy="{y(p["perplexity"]):.1f}" r="3" fill="#1f77b4"/>')
    parts.append(f'<text x="{left + 8}" y="{top + 12}" fill="#1f77b4">smoothquant perplexity</text></svg>')
    path.write_text("\n".join(parts) + "\n", encoding="utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=("methods", "formats"))
    parser.add_argument("--tokens", type=int, default=8192, help="evaluation tokens (default 8192)")
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    args = parser.parse_args()
    session = _session()
    windows, source = evaluation_windows(EvalSettings(tokens=args.tokens), session.loaded.tokenizer)
    settings = {"eval_tokens": int(windows.numel()), "window": 512, "calibration_tokens": 4096, "corpus": source}
    if args.part == "methods":
        result = run_methods(session, windows)
        write_svg(result["smoothquant"], result["methods"], args.out.with_suffix(".svg"))
    else:
        result = {"cells": run_formats(session, windows)}
    args.out.write_text(json.dumps({"settings": settings, **result}, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
