"""Bandwidth of each CUDA kernel, and llm-int8 linear-layer throughput, on one GPU.

Every kernel is first checked against its torch reference (llm.c's rule: no
number for a wrong kernel), then timed with CUDA events (median of repeats).
For each memory-bound kernel it prints the bytes it must move, its GB/s, the
GB/s of the same op written in torch (`kernels.reference` run on the GPU) and
of a device-to-device copy of the same number of bytes (the practical limit).
Then the `llm-int8` layer (engine.quant.int8_linear.Int8Linear, static and dynamic
outliers) against an fp16 `nn.Linear` and bitsandbytes' `Linear8bitLt(threshold=6.0)`
at hidden sizes 4096 and 8192, tokens 1 x 1 and 8 x 512. Ratios are within
this run only. `--quick` (bench/gpu_check.sh --quick) keeps the main rows: every
kernel, and the layer at hidden size 4096, with 10 repeats.

    python bench/cuda_kernels.py [--repeats 50] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable

import torch

from int8wb.kernels import cuda_loader, cuda_ops, reference


def time_ms(function: Callable[[], object], repeats: int) -> float:
    """Median milliseconds per call, CUDA-event timed, after warm-up."""
    for _ in range(3):
        function()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        function()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def copy_ms(n_bytes: int, repeats: int) -> float:
    """A device-to-device copy that reads and writes `n_bytes` in all."""
    source = torch.empty(n_bytes // 2, dtype=torch.uint8, device="cuda")
    target = torch.empty_like(source)
    return time_ms(lambda: target.copy_(source), repeats)


def same(got, expected) -> bool:
    got = got if isinstance(got, tuple) else (got,)
    expected = expected if isinstance(expected, tuple) else (expected,)
    return all(torch.equal(g, e) for g, e in zip(got, expected))


def kernel_cases(device: torch.device):
    """(name, bytes moved, CUDA op, torch op, exact?) for each memory-bound kernel."""
    generator = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(8192, 8192, device=device, dtype=torch.float16, generator=generator)  # 128 MiB
    x[:, ::997] *= 40
    tokens = x[:4096, :4096].contiguous()
    columns = torch.arange(0, 4096, 512, device=device)
    acc = torch.randint(-(2**24), 2**24, (4096, 4096), device=device, dtype=torch.int32, generator=generator)
    row_scale, col_scale = torch.rand(4096, device=device) * 8, torch.rand(4096, device=device) * 0.1
    bias = torch.randn(4096, device=device, dtype=torch.float16)
    outlier_out = torch.randn(4096, 4096, device=device, dtype=torch.float16)
    q, absmax = reference.quantize_rowwise(x)
    n = x.numel()

    def stats(module):
        absmax_acc = torch.zeros(8192, device=device)
        count_acc = torch.zeros(8192, dtype=torch.int64, device=device)
        return lambda: module.feature_stats(x, 6.0, absmax_acc, count_acc) or (absmax_acc, count_acc)

    t, k = tokens.shape
    return [
        ("feature_stats 8192x8192 f16", n * 2, stats(cuda_ops), stats(reference), False),
        (
            "quantize_rowwise 8192x8192 f16",
            n * 3 + 8192 * 4,
            lambda: cuda_ops.quantize_rowwise(x),
            lambda: reference.quantize_rowwise(x),
            True,
        ),
        (
            "quantize_tensor 8192x8192 f16",
            n * 3,
            lambda: cuda_ops.quantize_tensor(x),
            lambda: reference.quantize_tensor(x),
            True,
        ),
        (
            "outlier_columns 4096x4096 f16 (incl. 1 sync)",
            t * k * 2,
            lambda: cuda_ops.outlier_columns(tokens, 6.0),
            lambda: reference.outlier_columns(tokens, 6.0),
            True,
        ),
        (
            "decompose_outliers 4096x4096 f16, 8 cols",
            t * k * 3 + t * 8 * 2,
            lambda: cuda_ops.decompose_outliers(tokens, columns),
            lambda: reference.decompose_outliers(tokens, columns),
            True,
        ),
        (
            "dequantize_epilogue 4096x4096 +outliers+bias -> f16",
            t * k * (4 + 2 + 2),
            lambda: cuda_ops.dequantize_epilogue(acc, row_scale, col_scale, bias, outlier_out, torch.float16),
            lambda: reference.dequantize_epilogue(acc, row_scale, col_scale, bias, outlier_out, torch.float16),
            False,
        ),
        (
            "dequantize_rowwise 8192x8192 -> f16",
            n * 3,
            lambda: cuda_ops.dequantize_rowwise(q, absmax, torch.float16),
            lambda: reference.dequantize_rowwise(q, absmax, torch.float16),
            False,
        ),
    ]


def bench_kernels(device: torch.device, repeats: int) -> int:
    """Print one row per kernel; returns how many differed from the reference (and were not timed)."""
    print(f"{'kernel':<52}{'MB':>8}{'GB/s':>9}{'torch':>9}{'copy':>9}{'of copy':>9}{'x torch':>9}")
    wrong = 0
    for name, n_bytes, cuda_op, torch_op, exact in kernel_cases(device):
        got, expected = cuda_op(), torch_op()
        if exact and not same(got, expected):
            print(f"{name:<52} WRONG: differs from the reference, not timed")
            wrong += 1
            continue
        kernel, baseline, limit = time_ms(cuda_op, repeats), time_ms(torch_op, repeats), copy_ms(n_bytes, repeats)
        bandwidth = lambda ms: n_bytes / ms / 1e6  # noqa: E731  (GB/s)
        print(
            f"{name:<52}{n_bytes / 1e6:>8.0f}{bandwidth(kernel):>9.0f}{bandwidth(baseline):>9.0f}{bandwidth(limit):>9.0f}"
            f"{limit / kernel:>9.0%}{baseline / kernel:>9.2f}"
        )
    return wrong


def linear_layers(hidden: int, device: torch.device):
    """fp16 nn.Linear, our static and dynamic llm-int8 layers, and bitsandbytes' (or the reason it is missing)."""
    from int8wb.engine.quant.int8_linear import Int8Linear

    torch.manual_seed(hidden)
    fp16 = torch.nn.Linear(hidden, hidden, bias=True).to(device=device, dtype=torch.float16)
    outlier_columns = torch.arange(0, hidden, hidden // 8, device=device)  # 8 outlier features
    layers = {
        "fp16 nn.Linear": fp16,
        "llm-int8 (static)": Int8Linear.from_linear(fp16, "llm-int8", 6.0, outlier_columns),
        "llm-int8-dynamic": Int8Linear.from_linear(fp16, "llm-int8-dynamic", 6.0),
    }
    try:
        import bitsandbytes as bnb

        layer = bnb.nn.Linear8bitLt(hidden, hidden, bias=True, has_fp16_weights=False, threshold=6.0)
        layer.load_state_dict(fp16.state_dict())
        layers["bitsandbytes Linear8bitLt"] = layer.to(device)
    except Exception as exc:  # not installed, or no kernels for this GPU: say so and go on
        layers["bitsandbytes Linear8bitLt"] = f"unavailable: {type(exc).__name__}: {exc}"
    return layers, outlier_columns


def bench_linear(device: torch.device, repeats: int, hiddens: tuple[int, ...]) -> None:
    print(f"\n{'llm-int8 linear layer':<30}{'hidden':>8}{'tokens':>8}{'ms':>10}{'x fp16':>9}{'x bnb':>9}{'rel.err':>9}")
    for hidden in hiddens:
        layers, outlier_columns = linear_layers(hidden, device)
        for batch, sequence in ((1, 1), (8, 512)):
            x = torch.randn(batch, sequence, hidden, device=device, dtype=torch.float16)
            x[..., outlier_columns] *= 20  # the outlier features, over the 6.0 threshold
            with torch.no_grad():
                exact = layers["fp16 nn.Linear"](x).float()
                timings = {}
                for name, layer in layers.items():
                    if isinstance(layer, str):
                        continue
                    error = ((layer(x).float() - exact).norm() / exact.norm()).item()
                    timings[name] = (time_ms(lambda layer=layer: layer(x), repeats), error)
            fp16_ms = timings["fp16 nn.Linear"][0]
            bnb_ms = timings.get("bitsandbytes Linear8bitLt", (None,))[0]
            for name, (ms, error) in timings.items():
                versus_bnb = f"{bnb_ms / ms:>9.2f}" if bnb_ms else f"{'-':>9}"
                print(
                    f"{name:<30}{hidden:>8}{batch * sequence:>8}{ms:>10.3f}{fp16_ms / ms:>9.2f}{versus_bnb}{error:>9.4f}"
                )
        for name, layer in layers.items():
            if isinstance(layer, str):
                print(f"{name}: {layer}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per row (default 50, quick 10)")
    parser.add_argument("--quick", action="store_true", help="the main rows only: every kernel, hidden size 4096")
    args = parser.parse_args()
    repeats = args.repeats or (10 if args.quick else 50)
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to measure")
        return 2
    device = torch.device("cuda", torch.cuda.current_device())
    if not cuda_loader.kernels_available(device):
        print(f"CUDA kernels unavailable: {cuda_loader.unavailable_reason(device)}")
        return 1
    print(f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}; ratios are from this run\n")
    wrong = bench_kernels(device, repeats)
    bench_linear(device, repeats, (4096,) if args.quick else (4096, 8192))
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
