"""Which per-group measurement can rank groups for a skip list: does it rank the same on two texts?

For every decoder layer of the default model (or --model), on two disjoint texts of --tokens each:
- put back: the divergence from the baseline that the quantized model loses when that layer alone
  is put back in floating point (what keeping it removes, everything else quantized);
- alone: the divergence of the floating-point model with only that layer quantized (the damage it
  does by itself; `engine.measure.sensitivity` ranks by this).
A measurement that ranks layers by their effect gives the same order on both texts; one that ranks
by noise does not. Reported: Spearman's rho between the texts, with and without the layer that
dominates, each text's figures, and how the layers' divergences alone add up against the whole model's.

    python bench/sensitivity_signals.py [--model M] [--method vectorwise] [--tokens 2048] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from int8wb.engine.measure import evaluate, sensitivity
from int8wb.engine.pipeline import loading
from int8wb.engine.quant import quantize
from int8wb.engine.quant.layer_errors import rank_correlation
from int8wb.engine.task import Task


def measure_text(model, base, groups, batches) -> dict:
    """Each layer's two measurements on one text, with the fully quantized model's divergence."""
    reference = sensitivity._reference(base, batches, Task())
    everything = sensitivity._against(model, batches, reference, Task()).kl_divergence
    put_back, alone = [], []
    for names in groups.values():
        with sensitivity.kept_in_float(model, base, names):
            put_back.append(everything - sensitivity._against(model, batches, reference, Task()).kl_divergence)
        with sensitivity.quantized_alone(model, base, names, groups):
            alone.append(sensitivity._against(model, batches, reference, Task()).kl_divergence)
    return {"quantized": everything, "put_back": put_back, "alone": alone, "alone_sum": sum(alone)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--method", default="vectorwise")
    parser.add_argument("--tokens", type=int, default=2048, help="tokens of each text")
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    loaded = loading.load({"model": args.model, "device": "cpu"}, Task())
    settings = evaluate.EvalSettings(tokens=2 * args.tokens, window=args.window)
    windows, _ = evaluate.evaluation_windows(settings, loaded.tokenizer)
    half = len(windows) // 2
    model = quantize.run({"method": args.method}, Task(), loaded).model
    groups = sensitivity.groups_of(loaded.model, "layer")
    texts = [measure_text(model, loaded.model, groups, text.split(4)) for text in (windows[:half], windows[half:])]

    report = {"method": args.method, "tokens_per_text": int(windows[:half].numel()), "groups": list(groups)}
    for signal in ("put_back", "alone"):
        first, second = (np.array(text[signal]) for text in texts)
        dominant = int(np.argmax(first + second))
        rest = np.arange(len(first)) != dominant
        report[signal] = {
            "rho": rank_correlation(first, second),
            "rho_without_dominant": rank_correlation(first[rest], second[rest]),
            "dominant": list(groups)[dominant],
            "texts": [first.tolist(), second.tolist()],
        }
    report["quantized"] = [text["quantized"] for text in texts]
    report["alone_sum"] = [text["alone_sum"] for text in texts]
    if args.json:
        json.dump(report, sys.stdout, indent=1)
        print()
        return 0
    print(f"{args.method}, {report['tokens_per_text']:,} tokens per text, {len(groups)} decoder layers")
    for signal in ("put_back", "alone"):
        entry = report[signal]
        print(
            f"{signal:<9} rho between texts {entry['rho']:+.2f}, without {entry['dominant']} "
            f"{entry['rho_without_dominant']:+.2f}"
        )
        for text in entry["texts"]:
            print("   " + " ".join(f"{1e4 * value:5.1f}" for value in text) + "  (1e-4)")
    print(
        "divergence of the quantized model "
        + " / ".join(f"{value:.4f}" for value in report["quantized"])
        + "; the layers' alone, summed "
        + " / ".join(f"{value:.4f}" for value in report["alone_sum"])
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
