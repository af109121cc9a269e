"""Safetensors files written one tensor at a time, in any order, with the whole file laid out first.

safetensors' own `save_file` needs every tensor of a file in memory at once. A model quantized layer
by layer makes its tensors one decoder layer at a time, and a file of the export holds tensors of
many layers (all of them with the default shard size), so its writer must take each tensor when it
comes. The header of a safetensors file (names, dtypes, shapes, byte offsets) depends only on the
tensors' dtypes and shapes, which the plan of the export knows before any weight is read: the header
is written first, the file is sized, and each tensor's bytes go to their offset when the tensor is
made. The format (a little-endian u64 header length, the JSON header padded with spaces to 8 bytes,
then the data) is safetensors' documented one; the files open with `safe_open` like any other.

A file whose tensors were not all written is an error at `close`, never a file that looks whole.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

SAFETENSORS_DTYPES = {
    "float64": "F64",
    "float32": "F32",
    "float16": "F16",
    "bfloat16": "BF16",
    "int64": "I64",
    "int32": "I32",
    "int16": "I16",
    "int8": "I8",
    "uint8": "U8",
    "bool": "BOOL",
}


def _dtype_name(tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")


class PlannedFiles:
    """Safetensors files whose tensors (name -> a tensor or meta tensor of the dtype and shape) are known.

    `files` maps each file name to its tensor names. Every
    file is created with its header and full size at construction; `write(name, tensor)` puts one
    tensor's bytes in place; `close()` checks that every tensor was written and flushes the files
    to disk.
    """

    def __init__(
        self, directory: Path, files: dict[str, list[str]], specs: dict[str, Any], metadata: dict[str, str]
    ) -> None:
        self.directory = Path(directory)
        self.specs = specs
        self.location: dict[str, tuple[str, int]] = {}  # name -> (file, byte offset of its data)
        self.pending: set[str] = set()
        for filename, names in files.items():
            self._lay_out(filename, names, metadata)

    def _lay_out(self, filename: str, names: list[str], metadata: dict[str, str]) -> None:
        header: dict[str, Any] = {"__metadata__": dict(metadata)}
        offset = 0
        # Widest elements first, as safetensors lays them out: every tensor starts aligned to its element size.
        for name in sorted(names, key=lambda n: -self.specs[n].element_size()):
            spec = self.specs[name]
            size = spec.numel() * spec.element_size()
            header[name] = {
                "dtype": SAFETENSORS_DTYPES[_dtype_name(spec)],
                "shape": list(spec.shape),
                "data_offsets": [offset, offset + size],
            }
            offset += size
        encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
        encoded += b" " * (-len(encoded) % 8)
        start = 8 + len(encoded)
        with open(self.directory / filename, "wb") as handle:
            handle.write(struct.pack("<Q", len(encoded)))
            handle.write(encoded)
            handle.truncate(start + offset)
        for name in names:
            self.location[name] = (filename, start + header[name]["data_offsets"][0])
            self.pending.add(name)

    def write(self, name: str, tensor) -> None:
        """Put `tensor`'s bytes where the plan placed `name`; its dtype and shape must be the planned ones."""
        spec = self.specs[name]
        if name not in self.pending:
            raise ValueError(f"{name} is not a tensor still to be written")
        if (_dtype_name(tensor), tuple(tensor.shape)) != (_dtype_name(spec), tuple(spec.shape)):
            raise ValueError(
                f"{name} is {_dtype_name(tensor)} {tuple(tensor.shape)}, "
                f"the plan has {_dtype_name(spec)} {tuple(spec.shape)}"
            )
        filename, offset = self.location[name]
        data = tensor.detach().cpu().contiguous().reshape(-1).view(_byte_dtype()).numpy()
        with open(self.directory / filename, "r+b") as handle:
            handle.seek(offset)
            handle.write(memoryview(data))
        self.pending.discard(name)

    def close(self) -> None:
        """Check that nothing is missing, then flush every file to disk."""
        if self.pending:
            missing = sorted(self.pending)
            raise RuntimeError(f"{len(missing)} planned tensors were never written, the first: {missing[0]}")
        for filename in {filename for filename, _ in self.location.values()}:
            with open(self.directory / filename, "rb") as handle:
                os.fsync(handle.fileno())


def _byte_dtype():
    import torch

    return torch.uint8
