"""Numeric ops of the workbench, in one place.

`kernels.ops` is the API the engine calls. Each op has a torch reference
(`kernels.reference`, runs anywhere, the ground truth) and, for tensors on a
CUDA device, a CUDA implementation. Nothing outside this package knows which
one ran.
"""
