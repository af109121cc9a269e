"""CUDA implementations of the quantization ops, with the signatures of `kernels.reference`.

Int8 values and scales are bit-identical to the reference (the kernels
perform the same float32 operations in the same order, with IEEE division and
no contracted multiply-adds); the dequantized floating-point outputs agree to
the last bit with the CPU reference and within one float32 rounding of the
torch reference run on the GPU (torch's CUDA division by a scalar multiplies
by its reciprocal).

Every op takes CUDA tensors of float32, float16 or bfloat16 (the registry in
`kernels.ops` says which inputs qualify and sends the rest to the reference),
of any 2-D shape. A non-contiguous input is made contiguous first. Outputs are
allocated by torch on the input's device; kernels run on torch's current
stream. Kernel sources: feature_stats.cu, quantize.cu, outliers.cu,
epilogue.cu; the INT8 GEMM is cuBLASLt through `torch._int_mm` (see the
header of epilogue.cu for why), which needs CUDA but none of the compiled
kernels.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from int8wb.kernels import cuda_loader

FLOAT_DTYPES = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16"}
PACK_BYTES = 16  # one vector access per thread
THREADS = 256  # threads per block of the row-wise kernels
STATS_BLOCK = (32, 8)  # feature_stats.cu: column packs x row groups
INT_MM_MIN_ROWS = 17  # torch._int_mm on CUDA needs more than 16 rows of `a`
INT_MM_MULTIPLE = 8  # ... and K and N multiples of 8


def _require_2d(name: str, tensor: torch.Tensor) -> None:
    if tensor.dim() != 2:
        raise ValueError(f"{name} must be a 2-D tensor, got shape {tuple(tensor.shape)}")


def _pack_width(cols: int, tensors: list[torch.Tensor]) -> int:
    """Elements per vector access: a 16-byte pack of the first tensor's dtype when every
    row of every tensor starts aligned for it, else 1."""
    width = PACK_BYTES // tensors[0].element_size()
    aligned = all(t.data_ptr() % (width * t.element_size()) == 0 for t in tensors)
    return width if cols % width == 0 and aligned else 1


def _row_grid(x: torch.Tensor, rows: int) -> tuple[int]:
    """One block per row, up to 16 blocks per multiprocessor; the kernels stride over the rest."""
    return (max(1, min(rows, 16 * cuda_loader.multiprocessor_count(x.device.index or 0))),)


def _entry(kernel: str, dtype: torch.dtype, width: int) -> str:
    return f"{kernel}_{FLOAT_DTYPES[dtype]}_v{width}"


def feature_stats(x: torch.Tensor, threshold: float, absmax_acc: torch.Tensor, count_acc: torch.Tensor) -> None:
    """Fold one batch into running per-feature statistics (see reference.feature_stats)."""
    _require_2d("x", x)
    rows, cols = x.shape
    if absmax_acc.shape != (cols,) or absmax_acc.dtype != torch.float32 or not absmax_acc.is_contiguous():
        raise ValueError(f"absmax_acc must be a contiguous float32 tensor of shape ({cols},)")
    if count_acc.shape != (cols,) or count_acc.dtype != torch.int64 or not count_acc.is_contiguous():
        raise ValueError(f"count_acc must be a contiguous int64 tensor of shape ({cols},)")
    if absmax_acc.device != x.device or count_acc.device != x.device:
        raise ValueError("absmax_acc and count_acc must be on the device of x")
    if rows == 0 or cols == 0:
        return
    x = x.detach().contiguous()
    # torch compares x in its own dtype with the threshold rounded to that dtype.
    threshold_in_dtype = torch.tensor(float(threshold), dtype=x.dtype).float().item()
    width = _pack_width(cols, [x])
    packs = cols // width
    grid_x = -(-packs // STATS_BLOCK[0])
    target_blocks = 8 * cuda_loader.multiprocessor_count(x.device.index or 0)
    grid_y = max(1, min(-(-rows // STATS_BLOCK[1]), -(-target_blocks // grid_x), 65535))
    cuda_loader.launch(
        x.device,
        "feature_stats",
        _entry("feature_stats", x.dtype, width),
        (grid_x, grid_y),
        STATS_BLOCK,
        (x, np.int64(rows), np.int64(cols), np.float32(threshold_in_dtype), absmax_acc, count_acc),
    )


def outlier_columns(x: torch.Tensor, threshold: float) -> torch.Tensor:
    """The columns of x (T, K) with any |x| > threshold (see reference.outlier_columns).

    One pass of the feature_stats kernel counts, per column, the values over the
    threshold (compared in x's dtype, as the reference does) without the (T, K)
    temporaries of `abs() > threshold`; the count vector (K,) stays on the device.
    Compacting it into indices is the one host synchronisation: the number of
    outlier columns sizes the matrices that follow.
    """
    _require_2d("x", x)
    cols = x.shape[1]
    absmax = torch.zeros(cols, dtype=torch.float32, device=x.device)
    count = torch.zeros(cols, dtype=torch.int64, device=x.device)
    feature_stats(x, threshold, absmax, count)
    return count.nonzero().squeeze(1)


def quantize_rowwise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Vector-wise quantization: one abs-max scale per row. Returns (int8 (R, C), float32 (R,))."""
    _require_2d("x", x)
    x = x.detach().contiguous()
    rows, cols = x.shape
    q = torch.empty((rows, cols), dtype=torch.int8, device=x.device)
    absmax = torch.zeros(rows, dtype=torch.float32, device=x.device)
    if rows == 0 or cols == 0:
        return q, absmax
    width = _pack_width(cols, [x, q])
    cuda_loader.launch(
        x.device,
        "quantize",
        _entry("quantize_rowwise", x.dtype, width),
        _row_grid(x, rows),
        (THREADS,),
        (x, q, absmax, np.int64(rows), np.int64(cols)),
    )
    return q, absmax


def quantize_tensor(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Naive quantization: one abs-max scale for the whole tensor. Returns (int8, float32 scalar).

    Two launches (abs-max, then quantize with the scale read on the device), no host sync.
    """
    x = x.detach().contiguous()
    n = x.numel()
    q = torch.empty(x.shape, dtype=torch.int8, device=x.device)
    absmax = torch.zeros((), dtype=torch.float32, device=x.device)
    if n == 0:
        return q, absmax
    # The flat kernels handle a tail that is not a whole pack, so only alignment matters.
    width = PACK_BYTES // x.element_size() if x.data_ptr() % PACK_BYTES == 0 else 1
    blocks = (max(1, min(-(-n // (THREADS * width)), 8 * cuda_loader.multiprocessor_count(x.device.index or 0))),)
    cuda_loader.launch(
        x.device, "quantize", _entry("tensor_absmax", x.dtype, width), blocks, (THREADS,), (x, np.int64(n), absmax)
    )
    cuda_loader.launch(
        x.device, "quantize", _entry("quantize_tensor", x.dtype, width), blocks, (THREADS,), (x, absmax, np.int64(n), q)
    )
    return q, absmax


def _outlier_columns(outlier_cols: torch.Tensor, cols: int, device: torch.device) -> torch.Tensor:
    """The outlier column indices as contiguous int64 on `device`; range-checked when they come from the CPU."""
    if outlier_cols.dim() != 1:
        raise ValueError(f"outlier_cols must be 1-D, got shape {tuple(outlier_cols.shape)}")
    if outlier_cols.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise ValueError(f"outlier_cols must hold integer column indices, got {outlier_cols.dtype}")
    if not outlier_cols.is_cuda and outlier_cols.numel():
        low, high = int(outlier_cols.min()), int(outlier_cols.max())
        if low < 0 or high >= cols:
            raise ValueError(f"outlier column indices must lie in [0, {cols}), got {low}..{high}")
    return outlier_cols.to(device=device, dtype=torch.int64).contiguous()


def decompose_outliers(x: torch.Tensor, outlier_cols: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split activations into an INT8 part and a floating-point outlier part (see reference).

    x: (T, K); outlier_cols: (n,) column indices. Returns (int8 (T, K), float32 (T,), (T, n) in x's dtype).
    Indices already on the GPU are not range-checked (that would cost a sync); an index
    outside [0, K) is ignored by the mask and gathers zeros.
    """
    _require_2d("x", x)
    x = x.detach().contiguous()
    rows, cols = x.shape
    columns = _outlier_columns(outlier_cols, cols, x.device)
    n_columns = columns.numel()
    q = torch.empty((rows, cols), dtype=torch.int8, device=x.device)
    absmax = torch.zeros(rows, dtype=torch.float32, device=x.device)
    outliers = torch.empty((rows, n_columns), dtype=x.dtype, device=x.device)
    if rows == 0 or cols == 0:
        return q, absmax, outliers
    mask = torch.zeros(cols, dtype=torch.uint8, device=x.device)  # (K,) 1 at outlier columns
    if n_columns:
        cuda_loader.launch(
            x.device,
            "outliers",
            "outlier_mask",
            (max(1, min(-(-n_columns // THREADS), 1024)),),
            (THREADS,),
            (columns, np.int64(n_columns), mask, np.int64(cols)),
        )
    width = _pack_width(cols, [x, q, mask])
    # `columns` is a valid pointer even when empty; the kernel does not read it then.
    columns_arg = columns if n_columns else mask
    outliers_arg = outliers if n_columns else q
    cuda_loader.launch(
        x.device,
        "outliers",
        _entry("decompose_outliers", x.dtype, width),
        _row_grid(x, rows),
        (THREADS,),
        (x, mask, columns_arg, np.int64(n_columns), np.int64(rows), np.int64(cols), q, absmax, outliers_arg),
    )
    return q, absmax, outliers


def int8_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact INT8 x INT8 -> INT32 product `a @ b.T` on cuBLASLt (`torch._int_mm`); a: (M, K), b: (N, K).

    cuBLASLt's int8 GEMM needs M > 16 and K, N multiples of 8: smaller or odd
    shapes are zero-padded (zeros add nothing to an integer dot product) and
    the result is cut back to (M, N).
    """
    _require_2d("a", a)
    _require_2d("b", b)
    if a.dtype != torch.int8 or b.dtype != torch.int8:
        raise ValueError(f"int8_matmul takes int8 operands, got {a.dtype} and {b.dtype}")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"inner dimensions differ: a is {tuple(a.shape)}, b is {tuple(b.shape)}")
    m, k = a.shape
    n = b.shape[0]
    if m == 0 or n == 0 or k == 0:
        return torch.zeros((m, n), dtype=torch.int32, device=a.device)
    pad_k = -k % INT_MM_MULTIPLE
    pad_n = -n % INT_MM_MULTIPLE
    pad_m = max(0, INT_MM_MIN_ROWS - m)
    a = a.contiguous()
    b = b.contiguous()
    if pad_m or pad_k:
        a = F.pad(a, (0, pad_k, 0, pad_m))
    if pad_n or pad_k:
        b = F.pad(b, (0, pad_k, 0, pad_n))
    acc = torch._int_mm(a, b.t())  # (M', N') int32; b.t() is the column-major layout cuBLASLt wants
    if pad_m or pad_n:
        acc = acc[:m, :n].contiguous()
    return acc


def dequantize_epilogue(
    acc: torch.Tensor,
    row_absmax: torch.Tensor,
    col_absmax: torch.Tensor,
    bias: torch.Tensor | None = None,
    outlier_out: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """INT32 accumulator (M, N) -> out_dtype with row (M,) and column (N,) scales, plus outliers and bias, in one pass."""
    _require_2d("acc", acc)
    if out_dtype not in FLOAT_DTYPES:
        raise ValueError(f"out_dtype must be one of {list(FLOAT_DTYPES)}, got {out_dtype}")
    acc = acc.contiguous()
    rows, cols = acc.shape
    row_scale, row_stride = _scale_vector("row_absmax", row_absmax, rows, acc.device)
    col_scale, col_stride = _scale_vector("col_absmax", col_absmax, cols, acc.device)
    y = torch.empty((rows, cols), dtype=out_dtype, device=acc.device)
    if rows == 0 or cols == 0:
        return y
    bias_arg, has_bias = acc, 0
    if bias is not None:
        if bias.numel() != cols:
            raise ValueError(f"bias must have {cols} elements, got shape {tuple(bias.shape)}")
        bias_arg, has_bias = bias.detach().reshape(cols).to(device=acc.device, dtype=torch.float32).contiguous(), 1
    outlier_arg, has_outlier, outlier_dtype = acc, 0, torch.float32
    if outlier_out is not None:
        if outlier_out.shape != (rows, cols):
            raise ValueError(f"outlier_out must have shape {(rows, cols)}, got {tuple(outlier_out.shape)}")
        outlier_arg = outlier_out.detach()
        if outlier_arg.dtype not in FLOAT_DTYPES:
            outlier_arg = outlier_arg.float()
        outlier_arg, has_outlier, outlier_dtype = outlier_arg.contiguous(), 1, outlier_arg.dtype
    checked = [acc, y] + ([bias_arg] if has_bias else []) + ([outlier_arg] if has_outlier else [])
    width = 4 if cols % 4 == 0 and all(t.data_ptr() % (4 * t.element_size()) == 0 for t in checked) else 1
    entry = f"dequantize_epilogue_{FLOAT_DTYPES[out_dtype]}_{FLOAT_DTYPES[outlier_dtype]}_v{width}"
    cuda_loader.launch(
        acc.device,
        "epilogue",
        entry,
        _row_grid(acc, rows),
        (THREADS,),
        (
            acc,
            row_scale,
            np.int64(row_stride),
            col_scale,
            np.int64(col_stride),
            bias_arg,
            np.int32(has_bias),
            outlier_arg,
            np.int32(has_outlier),
            y,
            np.int64(rows),
            np.int64(cols),
        ),
    )
    return y


def _scale_vector(name: str, scale: torch.Tensor, length: int, device: torch.device) -> tuple[torch.Tensor, int]:
    """A float32 scale vector on `device` and its stride: 0 for one number broadcast to all."""
    flat = scale.detach().reshape(-1).to(device=device, dtype=torch.float32).contiguous()
    if flat.numel() == 1:
        return flat, 0
    if flat.numel() != length:
        raise ValueError(f"{name} must hold 1 or {length} scales, got {flat.numel()}")
    return flat, 1


def dequantize_rowwise(q: torch.Tensor, absmax: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """int8 (R, C) with per-row abs-max (R,) (or a scalar) -> floating point (R, C)."""
    _require_2d("q", q)
    if dtype not in FLOAT_DTYPES:
        raise ValueError(f"dtype must be one of {list(FLOAT_DTYPES)}, got {dtype}")
    q = q.contiguous()
    rows, cols = q.shape
    scale, stride = _scale_vector("absmax", absmax, rows, q.device)
    y = torch.empty((rows, cols), dtype=dtype, device=q.device)
    if rows == 0 or cols == 0:
        return y
    width = _pack_width(cols, [y, q])
    cuda_loader.launch(
        q.device,
        "quantize",
        _entry("dequantize_rowwise", dtype, width),
        _row_grid(q, rows),
        (THREADS,),
        (q, scale, np.int64(stride), y, np.int64(rows), np.int64(cols)),
    )
    return y
