"""Divergence from the float model on the default model: the table, the reference's k, its file, and its cost.

    python -P bench/divergence.py [--model M] [--tokens 8192] [--methods all] [--out docs/divergence.json]

1. table: every method quantized and evaluated once (perplexity and divergence in one pass), the float
   model's predictions saved as a reference file; its size against the full float32 logits.
2. k: the mean KL divergence from a top-k reference file against the exact KL (both models' whole
   log-softmax side by side, one window at a time) for several k, per method.
3. export: llm-int8 exported for bitsandbytes, re-opened by the workbench alone and evaluated against the
   saved reference: its mean KL against the in-memory llm-int8's.
4. cost: a plain perplexity pass (baseline, then one method) against the pass with the divergence (both
   batch by batch, the method's exact KL against the baseline's log-softmax), alternated on the same tokens
   in this run, the median of several repeats.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from int8wb.engine.measure import divergence, evaluate
from int8wb.engine.pipeline import loading
from int8wb.engine.quant import quantize, scan
from int8wb.engine.task import Task
from int8wb.engine.vocabulary import METHODS, NEEDS_SCAN

K_VALUES = (4, 8, 16, 32, 64, 256, 1024, 4096)


def quantized_models(loaded, methods: list[str]) -> dict:
    found = scan.run({"tokens": 4096}, Task(), loaded) if any(m in NEEDS_SCAN for m in methods) else None
    return {m: quantize.run({"method": m}, Task(), loaded, found) for m in methods}


def k_accuracy(loaded, variants: dict, windows, k_values=K_VALUES) -> dict:
    """Per method and k: mean KL from the top-k reference, and the exact mean KL, over `windows`."""
    sums = {m: {"exact": 0.0, **{str(k): 0.0 for k in k_values}} for m in variants}
    positions = 0
    with torch.no_grad():
        for window in windows.split(1):
            p = torch.log_softmax(loaded.model(input_ids=window, use_cache=False).logits[0, :-1].float(), dim=-1)
            tops = {k: p.topk(k, dim=-1) for k in k_values}
            for name, variant in variants.items():
                q = torch.log_softmax(variant.model(input_ids=window, use_cache=False).logits[0, :-1].float(), dim=-1)
                sums[name]["exact"] += float(divergence.exact_kl(p, q).sum())
                for k, top in tops.items():
                    sums[name][str(k)] += float(divergence.top_k_kl(q, top.indices, top.values).sum())
            positions += p.shape[0]
    return {m: {key: value / positions for key, value in values.items()} for m, values in sums.items()}


def cost(loaded, variant, windows, repeats: int = 5) -> dict:
    """Seconds of a plain perplexity pass (baseline, then the method) and of the pass with the divergence
    (both batch by batch, the method's exact KL against the baseline), alternated on the same tokens;
    medians of `repeats`."""
    plain, with_divergence = [], []
    models = [loaded.model, variant.model]
    for _ in range(repeats):
        started = time.perf_counter()
        for model in models:
            evaluate.perplexity(model, windows, 4, Task())
        plain.append(time.perf_counter() - started)
        ref = divergence.Reference.empty(windows.numpy(), divergence.SHOWN_TOP, {}, "float", "")
        scorings = [evaluate.Scoring(divergence.Comparison(ref, exact=True), fills=fills) for fills in (True, False)]
        started = time.perf_counter()
        evaluate.measure(models, windows, 4, Task(), scorings)
        with_divergence.append(time.perf_counter() - started)
    ratios = sorted(d / p for d, p in zip(with_divergence, plain))
    return {
        "plain_s": statistics.median(plain),
        "with_divergence_s": statistics.median(with_divergence),
        "extra": statistics.median(ratios) - 1,
        "extra_each": [r - 1 for r in ratios],
        "repeats": repeats,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--k-tokens", type=int, default=8192, help="tokens of the k measurement")
    parser.add_argument("--cost-tokens", type=int, default=2048, help="tokens of the cost measurement")
    parser.add_argument("--out", default=None, help="write the measurements as JSON here")
    parser.add_argument("--cost-only", action="store_true", help="only the cost, of the first method")
    parser.add_argument("--repeats", type=int, default=5, help="repeats of the cost measurement (median)")
    parser.add_argument("--k-only", action="store_true", help="only the k measurement (no table, export, cost)")
    args = parser.parse_args()
    methods = quantize.check_methods(args.methods)
    loaded = loading.load({"model": args.model, "device": "cpu"}, Task())
    variants = quantized_models(loaded, methods)
    report = {"model": loaded.name, "tokens": args.tokens, "top_k": divergence.TOP_K}
    if args.cost_only:
        cost_windows, _ = evaluate.evaluation_windows(evaluate.EvalSettings(tokens=args.cost_tokens), loaded.tokenizer)
        print(json.dumps(cost(loaded, variants[methods[0]], cost_windows, args.repeats)), flush=True)
        return 0
    if args.k_only:
        windows, _ = evaluate.evaluation_windows(evaluate.EvalSettings(tokens=args.k_tokens), loaded.tokenizer)
        print(json.dumps(k_accuracy(loaded, variants, windows), indent=1), flush=True)
        return 0
    with tempfile.TemporaryDirectory() as folder:
        reference_path = Path(folder) / "float.npz"
        result = evaluate.run({"tokens": args.tokens, "save_reference": str(reference_path)}, Task(), loaded, variants)
        result.pop("token_detail")
        report["table"] = result
        print(evaluate.format_table(result), flush=True)
        if "llm-int8" in variants:
            report["export"] = export_against_reference(loaded, variants["llm-int8"], reference_path, args.tokens)
            print(json.dumps(report["export"]), flush=True)
    windows, _ = evaluate.evaluation_windows(evaluate.EvalSettings(tokens=args.k_tokens), loaded.tokenizer)
    report["k"] = k_accuracy(loaded, variants, windows)
    print(json.dumps(report["k"], indent=1), flush=True)
    cost_windows, _ = evaluate.evaluation_windows(evaluate.EvalSettings(tokens=args.cost_tokens), loaded.tokenizer)
    cost_method = "llm-int8" if "llm-int8" in variants else methods[0]
    report["cost"] = {"method": cost_method, "tokens": int(cost_windows.numel())}
    report["cost"].update(cost(loaded, variants[cost_method], cost_windows, args.repeats))
    print(json.dumps(report["cost"]), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1, default=float) + "\n", encoding="utf-8")
    return 0


def export_against_reference(loaded, variant, reference_path: Path, tokens: int) -> dict:
    """llm-int8 written for bitsandbytes, re-opened alone, evaluated against the saved reference."""
    from int8wb.engine.checkpoint import export

    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "llm-int8-bnb"
        export.run({"method": "llm-int8", "out": str(out), "format": "bitsandbytes"}, Task(), loaded, variant, None)
        reopened = loading.load({"model": str(out), "device": "cpu"}, Task())
        result = evaluate.run({"tokens": tokens, "reference": str(reference_path)}, Task(), reopened, {})
    row = result["rows"][0]
    return {
        "method": row["method"],
        "kl_mean": row["kl_mean"],
        "same_top": row["same_top"],
        "perplexity": row["perplexity"],
    }


if __name__ == "__main__":
    sys.exit(main())
