"""CPU speed of the exact INT8 matmul and of weight quantization, as ratios against same-run baselines.

1. INT8 x INT8 -> INT32, (M, K) @ (N, K).T: our ops.int8_matmul (float32 GEMM per
   exact K-chunk) against an fp32 matmul of the same shape (the baseline),
   torch._int_mm, and bitsandbytes' int8_linear_matmul where installed.
   Target: at most 1.5x the fp32 matmul, exact against torch._int_mm.
2. Weight quantization (row-wise, fp16 and fp32 in): GB/s of input read,
   against a same-run tensor copy of the same bytes and bitsandbytes'
   int8_vectorwise_quant where installed.

Run: .venv/bin/python bench/int8_matmul.py  (prints one table; no thresholds enforced)
"""

from __future__ import annotations

import time

import torch

from int8wb.kernels import ops

SHAPES = [(4096, 576, 1536), (4096, 1536, 576), (512, 4096, 4096)]  # (M, K, N)
WEIGHT_SHAPES = [(1536, 576), (4096, 4096)]


def best_time(fn, repeat: int = 5) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def bitsandbytes_functional():
    try:
        import bitsandbytes.functional as functional
    except Exception:  # not installed, or no usable backend on this machine
        return None
    return functional


def bench_matmul(bnb) -> None:
    print(f"INT8 x INT8 -> INT32 on the CPU ({torch.get_num_threads()} threads); ratio = time / fp32 matmul time")
    print(f"{'M x K x N':<20}{'fp32 ms':>10}{'ours':>9}{'_int_mm':>9}{'bnb':>9}  exact")
    for m, k, n in SHAPES:
        # What the layers multiply: activations quantized per token, weights per row.
        a, _ = ops.quantize_rowwise(torch.randn(m, k))
        b, _ = ops.quantize_rowwise(torch.randn(n, k) * 0.02)
        a32, b32 = a.float(), b.float()
        fp32 = best_time(lambda: a32 @ b32.t())
        ours = best_time(lambda: ops.int8_matmul(a, b))
        b_t = b.t().contiguous()
        int_mm = best_time(lambda: torch._int_mm(a, b_t), repeat=1)
        exact = torch.equal(ops.int8_matmul(a, b), torch._int_mm(a, b_t))
        bnb_ratio = "n/a"
        if bnb is not None:
            bnb_ratio = f"{best_time(lambda: bnb.int8_linear_matmul(a, b)) / fp32:.2f}x"
        print(
            f"{f'{m}x{k}x{n}':<20}{fp32 * 1e3:>10.1f}{ours / fp32:>8.2f}x{int_mm / fp32:>8.1f}x{bnb_ratio:>9}  {exact}"
        )


def bench_weight_quantization(bnb) -> None:
    print("\nrow-wise weight quantization: GB/s of input read (copy = same bytes cloned, same run)")
    print(f"{'shape':<14}{'dtype':<10}{'copy':>9}{'ours':>9}{'bnb':>9}{'ours/copy':>11}")
    for rows, cols in WEIGHT_SHAPES:
        for dtype in (torch.float16, torch.float32):
            weight = torch.randn(rows, cols).to(dtype)
            gigabytes = weight.numel() * weight.element_size() / 1e9
            copy = gigabytes / best_time(lambda: weight.clone())
            ours = gigabytes / best_time(lambda: ops.quantize_rowwise(weight))
            bnb_rate = "n/a"
            if bnb is not None:
                bnb_rate = f"{gigabytes / best_time(lambda: bnb.int8_vectorwise_quant(weight)):.2f}"
            print(
                f"{f'{rows}x{cols}':<14}{str(dtype).removeprefix('torch.'):<10}{copy:>9.2f}{ours:>9.2f}"
                f"{bnb_rate:>9}{ours / copy:>10.2f}x"
            )


if __name__ == "__main__":
    bnb = bitsandbytes_functional()
    bench_matmul(bnb)
    bench_weight_quantization(bnb)
