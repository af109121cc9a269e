"""Where a baseline decode step's time goes: its weight products alone, the whole step, a large copy;
and what the small-batch INT8 path (kernels.cpu_gemv) changes.

The default model's decode step (batch 1, KV cache) is timed whole; then only its matrix-vector
products (every Linear and the LM head on one token: each weight read once and nothing else);
then a large copy. All in one run, medians of --repeats, printed with the bandwidth each implies
and as ratios to the whole step, so that the distance between `int8wb bench-decode`'s achieved
bandwidth and the copy's can be split into "reading weights" and "everything else".

With --methods, each method's decode step on the small-batch path and on the GEMM paths it replaces
(`cpu_gemv.bypassed`), taking turns, as ratios to the float32 step. With --rows, one Linear
(576 -> 1536) at 1 .. 16 tokens on both paths: where the GEMM paths catch up sets cpu_gemv.MAX_ROWS.

    python bench/decode_step.py --repeats 20 --methods vectorwise,weight-only --rows
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from int8wb.engine.measure.decode import cache_keyword, copy_bandwidth
from int8wb.engine.pipeline import loading
from int8wb.engine.planning import presets, throughput
from int8wb.engine.planning.planner import Settings
from int8wb.engine.quant import quantize
from int8wb.engine.task import Task
from int8wb.engine.vocabulary import MIB
from int8wb.kernels import cpu_gemv

PROMPT_TOKENS = 32


def step_seconds(model, repeats: int) -> float:
    """Median time of one decode step after a PROMPT_TOKENS-token prompt (the cache grows by one per step)."""
    ids, keyword = torch.arange(PROMPT_TOKENS).reshape(1, -1), cache_keyword(model)
    times = []
    with torch.inference_mode():
        output = model(input_ids=ids, use_cache=True)
        token = output.logits[:, -1].argmax(dim=-1)
        for _ in range(repeats):
            started = time.perf_counter()
            output = model(input_ids=token[:, None], use_cache=True, **{keyword: getattr(output, keyword)})
            token = output.logits[:, -1].argmax(dim=-1)
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def products_seconds(model, repeats: int) -> float:
    """Median time of every Linear's (and the LM head's) product with one token, back to back."""
    weights = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    inputs = [torch.randn(1, w.shape[1], dtype=w.dtype) for w in weights]
    times = []
    with torch.inference_mode():
        for _ in range(repeats):
            started = time.perf_counter()
            for x, weight in zip(inputs, weights):
                F.linear(x, weight)
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def methods_table(loaded, methods: list[str], repeats: int, float_step: float) -> None:
    """Each method's step on the small-batch path and on the GEMM paths, as ratios to float32's step."""
    print(f"{'method':<20}{'small batch':>14}{'GEMM paths':>14}{'x float32 (new)':>17}{'x float32 (old)':>17}")
    for method in methods:
        model = quantize.run({"method": method}, Task(), loaded).model
        new, old = [], []
        for _ in range(3):  # taking turns, so that a change of load hits both
            new.append(step_seconds(model, repeats))
            with cpu_gemv.bypassed():
                old.append(step_seconds(model, repeats))
        new_s, old_s = statistics.median(new), statistics.median(old)
        print(
            f"{method:<20}{new_s * 1e3:>11.2f} ms{old_s * 1e3:>11.2f} ms"
            f"{float_step / new_s:>17.2f}{float_step / old_s:>17.2f}"
        )


def rows_table(repeats: int) -> None:
    """One W8A8 Linear (576 -> 1536) at a few tokens: the small-batch path against the GEMM paths."""
    from int8wb.engine.quant.int8_linear import Int8Linear

    module = Int8Linear.from_linear(torch.nn.Linear(576, 1536), "vectorwise")
    print(
        f"{'tokens':>8}{'small batch':>14}{'GEMM paths':>14}  (vectorwise 576 -> 1536, cpu_gemv.MAX_ROWS = {cpu_gemv.MAX_ROWS})"
    )
    with torch.inference_mode():
        for tokens in (1, 2, 4, 8, 12, 16):
            x = torch.randn(tokens, 576)
            times = {}
            for label, context in (("new", cpu_gemv.forced_isa(cpu_gemv.isa())), ("old", cpu_gemv.bypassed())):
                with context:
                    runs = []
                    for _ in range(repeats):
                        started = time.perf_counter()
                        for _ in range(20):
                            module(x)
                        runs.append((time.perf_counter() - started) / 20)
                    times[label] = statistics.median(runs)
            print(f"{tokens:>8}{times['new'] * 1e6:>11.1f} us{times['old'] * 1e6:>11.1f} us")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--copy-mib", type=int, default=256)
    parser.add_argument("--methods", default="", help="comma-separated INT8 methods to time on both paths")
    parser.add_argument("--rows", action="store_true", help="one Linear at 1 .. 16 tokens on both paths")
    args = parser.parse_args()
    loaded = loading.load({"device": "cpu"}, Task())
    arch, inventory = presets.from_model(loaded.model)
    settings = Settings(context=PROMPT_TOKENS + args.repeats // 2, batch=1, dtype=loaded.dtype)
    planned = throughput.decode_read(arch, inventory, "baseline", settings).step_bytes(1)
    weight_bytes = sum(
        m.weight.numel() * m.weight.element_size() for m in loaded.model.modules() if isinstance(m, torch.nn.Linear)
    )
    step = step_seconds(loaded.model, args.repeats)
    products = products_seconds(loaded.model, args.repeats)
    copy = statistics.median(copy_bandwidth("cpu", args.copy_mib * MIB) for _ in range(5))
    print(f"{loaded.name}, {loaded.dtype}, {torch.get_num_threads()} threads, median of {args.repeats}")
    print(
        f"whole decode step  {step * 1e3:8.2f} ms  {planned / 1e6:7.1f} MB planned   {planned / step / 1e9:6.2f} GB/s  1.00"
    )
    print(
        f"weight products    {products * 1e3:8.2f} ms  {weight_bytes / 1e6:7.1f} MB of weights {weight_bytes / products / 1e9:6.2f} GB/s"
        f"  {products / step:.2f}"
    )
    print(
        f"the rest of a step {(step - products) * 1e3:8.2f} ms  attention, norms, rotary, argmax, Python and dispatch  {(step - products) / step:.2f}"
    )
    print(
        f"copy ({args.copy_mib} MiB)     read + write {copy / 1e9:6.2f} GB/s; planned bytes at that rate: {planned / copy * 1e3:.2f} ms  {planned / copy / step:.2f}"
    )

    if args.methods:
        methods_table(loaded, args.methods.split(","), args.repeats, step)
    if args.rows:
        rows_table(args.repeats)


if __name__ == "__main__":
    main()
