"""The skip list of the sensitivity sweep against random skip lists of the same size, and what the error pass costs.

On the default model (or --model): the sweep for --method at --target (--group: the Linears that read
one input, each Linear, or each decoder layer's Linears), then 20 random lists of the same groups with as
many floating-point bytes (at most, and as close as the groups' sizes allow), each measured on the
held-out tokens the sweep never saw; the sweep's list should beat the best of them. Then the cost of the
sweep in evaluations per group, and of a scan with the per-Linear error pass against a plain scan of the
same tokens, each timed in this run. The sweep's list is also exported for transformers + bitsandbytes,
loaded there and evaluated on the same held-out tokens.

    python bench/sensitivity.py [--model M] [--method vectorwise] [--target 1.0] [--group input|linear|layer] [--json]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time

from int8wb.engine.measure import evaluate, sensitivity
from int8wb.engine.pipeline import loading
from int8wb.engine.quant import quantize, scan
from int8wb.engine.task import Task
from int8wb.engine.vocabulary import W8A8_METHODS


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--method", default="vectorwise")
    parser.add_argument("--target", type=float, default=1.0)
    parser.add_argument("--group", default=sensitivity.SweepSettings.group, choices=sensitivity.GROUPS)
    parser.add_argument("--tokens", type=int, default=2048, help="sweep tokens")
    parser.add_argument("--holdout-tokens", type=int, default=2048)
    parser.add_argument("--random-lists", type=int, default=20)
    parser.add_argument(
        "--scan-tokens", type=int, default=scan.ScanSettings.tokens, help="tokens of the scan-cost comparison"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    loaded = loading.load({"model": args.model, "device": "cpu"}, Task())
    report: dict = {"method": args.method, "target_pct": args.target}

    started = time.perf_counter()
    sweep = sensitivity.run(
        {
            "method": args.method,
            "target": args.target,
            "group": args.group,
            "tokens": args.tokens,
            "holdout_tokens": args.holdout_tokens,
        },
        Task(),
        loaded,
    )
    sweep_seconds = time.perf_counter() - started
    report["sweep"] = {
        k: sweep[k] for k in ("baseline", "quantized", "reached", "skip_modules", "float_bytes", "holdout")
    }
    report["sweep"]["curve"] = [
        {k: p[k] for k in ("added", "float_bytes", "change_pct", "expected_pct", "upper_pct", "kl_divergence")}
        for p in sweep["curve"]
    ]
    report["sweep"]["groups"] = [group for p in sweep["curve"] for group in p["added"]]

    report["random_lists"] = random_lists(loaded, args, sweep)
    best_random = min(entry["holdout_perplexity"] for entry in report["random_lists"])
    report["sweep_beats_best_random"] = sweep["holdout"]["with_skip_list"] < best_random

    report["bitsandbytes"] = bitsandbytes_check(loaded, args, sweep)
    one_eval = timed_evaluations(loaded, args)
    evaluations = 2 + len(sweep["groups"]) + len(sweep["curve"]) - 1 + 3
    report["sweep_cost"] = {
        "seconds": sweep_seconds,
        "groups": len(sweep["groups"]),
        "one_evaluation_seconds": one_eval["quantized"],
        "evaluations_per_group": sweep_seconds / one_eval["quantized"] / len(sweep["groups"]),
        "one_float_evaluation_seconds": one_eval["float"],
        "float_evaluations_per_group": sweep_seconds / one_eval["float"] / len(sweep["groups"]),
        "evaluations_run": evaluations,
    }
    report["error_pass_cost"] = error_pass_cost(loaded, args.scan_tokens)
    if args.json:
        json.dump(report, sys.stdout, indent=1)
        print()
    else:
        print_report(report)
    return 0


def random_lists(loaded, args, sweep) -> list[dict]:
    """Random lists of the sweep's groups with at most the sweep's floating-point bytes, each filled in a random
    order with every group that still fits; measured on the same held-out tokens."""
    groups = list(sensitivity.groups_of(loaded.model, args.group).items())
    sizes = {group: sensitivity._float_bytes(loaded.model, names) for group, names in groups}
    holdout = holdout_windows(loaded, args)
    variant = quantize.run({"method": args.method}, Task(), loaded)
    generator = random.Random(0)
    results = []
    for _ in range(args.random_lists):
        chosen, total = [], 0
        for group, names in generator.sample(groups, len(groups)):
            if total + sizes[group] <= sweep["float_bytes"]:
                chosen.append((group, names))
                total += sizes[group]
        names = [name for _, members in chosen for name in members]
        with sensitivity.kept_in_float(variant.model, loaded.model, names):
            perplexity = evaluate.perplexity(variant.model, holdout, 4, Task())["perplexity"]
        results.append(
            {"groups": [group for group, _ in chosen], "float_bytes": total, "holdout_perplexity": perplexity}
        )
    return results


def holdout_windows(loaded, args):
    """The held-out evaluation windows of the sweep (the default window of 512 tokens)."""
    windows, _ = evaluate.evaluation_windows(
        evaluate.EvalSettings(tokens=args.tokens + args.holdout_tokens), loaded.tokenizer
    )
    return windows[args.tokens // 512 :]


def bitsandbytes_check(loaded, args, sweep) -> dict:
    """The sweep's list exported for transformers + bitsandbytes, loaded there, evaluated on the held-out tokens."""
    import tempfile
    import warnings

    import torch
    from transformers import AutoModelForCausalLM

    from int8wb.engine.process.session import Session

    session = Session()
    session.load_model({"model": args.model, "device": "cpu"}, Task())
    session.quantize({"methods": [args.method], "skip_modules": sweep["skip_modules"]}, Task())
    with tempfile.TemporaryDirectory() as out:
        session.export({"method": args.method, "out": out}, Task())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # bitsandbytes warns that it casts float32 inputs to float16
            model, info = AutoModelForCausalLM.from_pretrained(out, device_map="cpu", output_loading_info=True)
            perplexity = evaluate.perplexity(model.eval(), holdout_windows(loaded, args), 4, Task())["perplexity"]
    skipped = set(sweep["skip_modules"])
    ours = sweep["holdout"]["with_skip_list"]
    return {
        "workbench_with_float16_inputs": float16_inputs_perplexity(loaded, args, sweep),
        "missing_or_unexpected": [*info["missing_keys"], *info["unexpected_keys"], *info["mismatched_keys"]],
        "skipped_as_torch_linear": sum(type(m) is torch.nn.Linear for n, m in model.named_modules() if n in skipped),
        "skipped": len(skipped),
        "lm_head": type(model.get_output_embeddings()).__name__,
        "holdout_perplexity": perplexity,
        "workbench_holdout_perplexity": ours,
        "difference_pct": 100 * (perplexity / ours - 1),
    }


def float16_inputs_perplexity(loaded, args, sweep) -> float:
    """The workbench's model with the list, each INT8 Linear's input rounded to float16 first, as bitsandbytes'
    CPU kernel does: how much of the difference to bitsandbytes that rounding alone makes."""
    from int8wb.engine.quant.int8_linear import Int8Linear

    variant = quantize.run({"method": args.method}, Task(), loaded)
    original = Int8Linear.forward
    Int8Linear.forward = lambda self, x: original(self, x.half().float())
    try:
        with sensitivity.kept_in_float(variant.model, loaded.model, sweep["skip_modules"]):
            return evaluate.perplexity(variant.model, holdout_windows(loaded, args), 4, Task())["perplexity"]
    finally:
        Int8Linear.forward = original


def timed_evaluations(loaded, args) -> dict[str, float]:
    """One plain evaluation of the quantized and of the floating-point model on as many tokens as the sweep's,
    the median of three each. Both count: the sweep's passes run mostly one or the other, and on a CPU
    with VNNI an INT8 layer runs several times faster than a float32 one."""
    windows, _ = evaluate.evaluation_windows(evaluate.EvalSettings(tokens=args.tokens), loaded.tokenizer)
    models = {"quantized": quantize.run({"method": args.method}, Task(), loaded).model, "float": loaded.model}
    seconds: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(3):
        for name, model in models.items():
            started = time.perf_counter()
            evaluate.perplexity(model, windows, 4, Task())
            seconds[name].append(time.perf_counter() - started)
    return {name: sorted(values)[1] for name, values in seconds.items()}


def error_pass_cost(loaded, tokens: int) -> dict:
    """A plain scan and a scan with the error pass of every W8A8 method, alternated three times, same tokens;
    with the errors of the last scan: how the methods order on each Linear, and each one's summary."""
    plain, with_errors = [], []
    for _ in range(3):
        for target, extra in ((plain, {}), (with_errors, {"error_methods": list(W8A8_METHODS)})):
            started = time.perf_counter()
            result = scan.run({"tokens": tokens, **extra}, Task(), loaded)
            target.append(time.perf_counter() - started)
    return {
        "ordering": method_ordering(result),
        "summary": result.error_payload()["errors"],
        "tokens": tokens,
        "plain_seconds": min(plain),
        "with_errors_seconds": min(with_errors),
        "error_pass_seconds": min(with_errors) - min(plain),
        "ratio": min(with_errors) / min(plain),
    }


def method_ordering(result) -> dict:
    """The share of Linears where naive INT8 loses more than vectorwise, and vectorwise no less than llm-int8."""
    figures = [s.sqnr_db[name] for s in result.layers for name in s.names]
    naive_worse = [f["absmax-tensor"] < f["vectorwise"] for f in figures]
    llm_int8_no_worse = [f["vectorwise"] <= f["llm-int8"] for f in figures]
    return {
        "linears": len(figures),
        "absmax_tensor_below_vectorwise": sum(naive_worse) / len(figures),
        "vectorwise_at_most_llm_int8": sum(llm_int8_no_worse) / len(figures),
        "both": sum(a and b for a, b in zip(naive_worse, llm_int8_no_worse)) / len(figures),
    }


def print_report(report: dict) -> None:
    sweep = report["sweep"]
    holdout = sweep["holdout"]
    print(
        f"{report['method']} at a target of {report['target_pct']:+g}%: keep {len(sweep['groups'])} groups "
        f"({sweep['float_bytes'] / 1e6:.1f} MB) in floating point: {sweep['groups']}"
    )
    print(
        f"  held out: baseline {holdout['baseline']:.3f}, {report['method']} {holdout['quantized']:.3f}, "
        f"with the list {holdout['with_skip_list']:.3f} ({holdout['change_pct']:+.2f}%)"
    )
    print("  random lists of as many floating-point MB, held-out perplexity:")
    for entry in sorted(report["random_lists"], key=lambda e: e["holdout_perplexity"]):
        print(
            f"    {entry['holdout_perplexity']:.3f}  {entry['float_bytes'] / 1e6:.1f} MB, {len(entry['groups'])} groups"
        )
    print(f"  the sweep's list beats the best random list: {report['sweep_beats_best_random']}")
    bnb = report["bitsandbytes"]
    print(
        f"  exported and loaded in transformers + bitsandbytes: {bnb['skipped_as_torch_linear']} of {bnb['skipped']} "
        f"skipped Linears are torch.nn.Linear, lm_head is {bnb['lm_head']}, missing or unexpected: "
        f"{bnb['missing_or_unexpected'] or 'none'}; held-out perplexity {bnb['holdout_perplexity']:.3f} "
        f"({bnb['difference_pct']:+.2f}% against the workbench's; the workbench with float16 inputs: "
        f"{bnb['workbench_with_float16_inputs']:.3f})"
    )
    cost = report["sweep_cost"]
    print(
        f"sweep: {cost['seconds']:.0f} s for {cost['groups']} groups = {cost['evaluations_per_group']:.2f} "
        f"evaluations of the quantized model ({cost['one_evaluation_seconds']:.1f} s) per group, "
        f"{cost['float_evaluations_per_group']:.2f} of the float model ({cost['one_float_evaluation_seconds']:.1f} s)"
        " (goal: under 2)"
    )
    errors = report["error_pass_cost"]
    print(
        f"error pass on {errors['tokens']:,} tokens: scan {errors['plain_seconds']:.1f} s, with errors {errors['with_errors_seconds']:.1f} s, "
        f"ratio {errors['ratio']:.2f} (goal: under 1.5)"
    )
    order = errors["ordering"]
    print(
        f"of {order['linears']} Linears: naive INT8 below vectorwise on {order['absmax_tensor_below_vectorwise']:.0%}, "
        f"vectorwise at most llm-int8 on {order['vectorwise_at_most_llm_int8']:.0%}, both on {order['both']:.0%}"
    )
    for method, entry in errors["summary"].items():
        print(
            f"  {method}: median {entry['median_sqnr_db']:.1f} dB, worst {entry['worst_linear']}, "
            f"loss vs outlier columns rho {entry['loss_vs_outliers']:+.2f}"
        )


if __name__ == "__main__":
    sys.exit(main())
