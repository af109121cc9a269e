"""The ops API: the one entry point the engine uses for numeric work.

Each op runs the CUDA implementation (`kernels.cuda_ops`) when its input lives
on a CUDA device, the dtype is one the kernels handle, and the kernels could be
loaded there; the torch reference (`kernels.reference`) otherwise. Signatures
and numeric conventions are those of `kernels.reference`; int8 values and
scales are identical whichever ran.

Importing this module initialises neither CUDA nor CuPy: the CUDA side is
imported the first time a CUDA tensor arrives.
"""

from __future__ import annotations

import functools

import torch

from kernels import reference


def _cuda_ops(op: str, first: torch.Tensor, out_dtype: torch.dtype | None = None):
    """`kernels.cuda_ops` when it should run `op` on `first`, else None."""
    if not first.is_cuda:
        return None
    from kernels import cuda_loader, cuda_ops

    if cuda_ops.supports(op, first, out_dtype) and cuda_loader.kernels_available(first.device):
        return cuda_ops
    return None


@functools.wraps(reference.feature_stats)
def feature_stats(x: torch.Tensor, threshold: float, absmax_acc: torch.Tensor, count_acc: torch.Tensor) -> None:
    backend = _cuda_ops("feature_stats", x) or reference
    return backend.feature_stats(x, threshold, absmax_acc, count_acc)


@functools.wraps(reference.quantize_rowwise)
def quantize_rowwise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return (_cuda_ops("quantize_rowwise", x) or reference).quantize_rowwise(x)


@functools.wraps(reference.quantize_tensor)
def quantize_tensor(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return (_cuda_ops("quantize_tensor", x) or reference).quantize_tensor(x)


@functools.wraps(reference.decompose_outliers)
def decompose_outliers(x: torch.Tensor, outlier_cols: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return (_cuda_ops("decompose_outliers", x) or reference).decompose_outliers(x, outlier_cols)


@functools.wraps(reference.int8_matmul)
def int8_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (_cuda_ops("int8_matmul", a) or reference).int8_matmul(a, b)


@functools.wraps(reference.dequantize_epilogue)
def dequantize_epilogue(
    acc: torch.Tensor,
    row_absmax: torch.Tensor,
    col_absmax: torch.Tensor,
    bias: torch.Tensor | None = None,
    outlier_out: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    backend = _cuda_ops("dequantize_epilogue", acc, out_dtype) or reference
    return backend.dequantize_epilogue(acc, row_absmax, col_absmax, bias, outlier_out, out_dtype)


@functools.wraps(reference.dequantize_rowwise)
def dequantize_rowwise(q: torch.Tensor, absmax: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return (_cuda_ops("dequantize_rowwise", q, dtype) or reference).dequantize_rowwise(q, absmax, dtype)


def quantize_blocks(x: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Q8_0 block quantization (kernels.reference.quantize_blocks); torch runs it on any device."""
    return reference.quantize_blocks(x, block)


def dequantize_blocks(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Q8_0 block dequantization (kernels.reference.dequantize_blocks); torch runs it on any device."""
    return reference.dequantize_blocks(q, scale, dtype)


__all__ = [
    "feature_stats",
    "quantize_rowwise",
    "quantize_tensor",
    "decompose_outliers",
    "int8_matmul",
    "dequantize_epilogue",
    "dequantize_rowwise",
    "quantize_blocks",
    "dequantize_blocks",
]
