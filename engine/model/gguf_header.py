"""Read and check the header of a GGUF file before any library trusts it.

transformers and the `gguf` package read a GGUF header as it claims to be: a tensor count of 0 gives
a model of randomly initialised weights, a data offset near 2^64 wraps around, a misaligned one reads
the wrong bytes, a key length past the end of the file is reported as "not a valid JSON file". This
reader walks the header itself with every count and length checked against the bytes that remain,
so a damaged file costs at most one pass over its header, and says where it is damaged:

- every key, value, array and tensor entry lies inside the file;
- every tensor has 1 to 4 dimensions, a known type, whole blocks of that type, a data offset aligned
  to the file's alignment, and its data inside the file without overlapping another's;
- the layer count the metadata states (`{architecture}.block_count`) is the number of layers whose
  tensors (`blk.N.*`) the file holds, numbered 0 to N-1.

Whether the tensors have the shapes the model needs is checked against the model built from this
metadata (engine.pipeline.gguf_stream), once the layer count is known to be what the file holds.
"""

from __future__ import annotations

import mmap
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from int8wb.engine.errors import ModelLoadError
from int8wb.engine.model.source_checks import regular_file

MAGIC = b"GGUF"
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_ARRAY_DEPTH = 8  # arrays of arrays: no published file nests them more than once
DEFAULT_ALIGNMENT = 32
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9
_LAYER_TENSOR = re.compile(r"blk\.(\d+)\.")


@dataclass(frozen=True)
class TensorEntry:
    name: str
    shape: tuple[int, ...]  # as GGUF stores it: the fastest-varying dimension first
    elements: int
    offset: int  # from the start of the data section
    size: int  # bytes


@dataclass(frozen=True)
class GGUFHeader:
    architecture: str
    values: dict[str, object]  # scalar and string values; arrays are checked and skipped
    tensors: tuple[TensorEntry, ...]

    def stored_elements(self) -> int:
        return sum(tensor.elements for tensor in self.tensors)


class _Cursor:
    """Reads little- or big-endian values from the mapped file; every read is checked against its end."""

    def __init__(self, path: Path, data: mmap.mmap) -> None:
        self.path, self.data, self.pos, self.order = path, data, 0, "<"

    def damaged(self, what: str) -> ModelLoadError:
        return unreadable(self.path, f"it is damaged at byte {self.pos:,}: {what}")

    def take(self, count: int, what: str) -> int:
        """The position of `count` bytes about to be read as `what`; the cursor moves past them."""
        if count < 0 or count > len(self.data) - self.pos:
            raise self.damaged(f"{what} needs {count:,} bytes, only {len(self.data) - self.pos:,} remain")
        start, self.pos = self.pos, self.pos + count
        return start

    def scalar(self, code: str, what: str):
        fmt = self.order + code
        return struct.unpack_from(fmt, self.data, self.take(struct.calcsize(fmt), what))[0]

    def string(self, what: str) -> str:
        at = self.pos
        length = self.scalar("Q", f"the length of {what}")
        if length > len(self.data) - self.pos:
            self.pos = at  # the damage is the length, where it is stored
            raise self.damaged(f"{what} claims {length:,} bytes, only {len(self.data) - at - 8:,} remain")
        start = self.take(length, what)
        try:
            return self.data[start : start + length].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise self.damaged(f"{what} is not UTF-8 text") from exc

    def value(self, kind: int, what: str, depth: int = 0):
        if kind in _SCALARS:
            return self.scalar(_SCALARS[kind], what)
        if kind == _STRING:
            return self.string(what)
        if kind != _ARRAY or depth >= MAX_ARRAY_DEPTH:
            raise self.damaged(f"{what} has value type {kind}, which GGUF does not define")
        item_kind, count = self.scalar("I", f"the item type of {what}"), self.scalar("Q", f"the length of {what}")
        if item_kind in _SCALARS:
            self.take(count * struct.calcsize(_SCALARS[item_kind]), f"the {count:,} items of {what}")
            return None
        smallest = 8 if item_kind == _STRING else 12  # a string's length; an array's type and length
        if count * smallest > len(self.data) - self.pos:
            raise self.damaged(f"{what} claims {count:,} items, more than the rest of the file can hold")
        if item_kind == _STRING:
            self._skip_strings(count, what)
            return None
        for i in range(count):
            self.value(item_kind, f"item {i} of {what}", depth + 1)
        return None

    def _skip_strings(self, count: int, what: str) -> None:
        """Steps over `count` strings (a vocabulary: 10^5 of them), checking each length, decoding none."""
        unpack, end, pos = struct.Struct(self.order + "Q").unpack_from, len(self.data), self.pos
        for i in range(count):
            if pos + 8 > end or pos + 8 + unpack(self.data, pos)[0] > end:
                self.pos = pos
                raise self.damaged(f"item {i} of {what} runs past the end of the file")
            pos += 8 + unpack(self.data, pos)[0]
        self.pos = pos


def unreadable(path: Path, why: str) -> ModelLoadError:
    return ModelLoadError(f"could not read the GGUF file {path}: {why}")


def read(path: Path) -> GGUFHeader:
    """The checked header of the GGUF file at `path`; ModelLoadError names the file and what is wrong."""
    regular_file(path)
    try:
        with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return _parse(_Cursor(path, data))
    except ValueError as exc:  # mmap of an empty file
        raise unreadable(path, "it is empty") from exc
    except OSError as exc:
        raise unreadable(path, str(exc)) from exc


def _parse(cursor: _Cursor) -> GGUFHeader:
    path = cursor.path
    start = cursor.take(4, "the magic number")
    if bytes(cursor.data[start : start + 4]) != MAGIC:
        raise unreadable(path, "it is not a GGUF file: it does not begin with the bytes 'GGUF'")
    version = cursor.scalar("I", "the version")
    if version & 0xFFFF == 0:  # written on a big-endian machine
        cursor.order, version = ">", struct.unpack(">I", struct.pack("<I", version))[0]
    if version not in (2, 3):
        raise cursor.damaged(f"GGUF version {version} is not one this workbench reads (2 or 3)")
    tensor_count, value_count = cursor.scalar("Q", "the tensor count"), cursor.scalar("Q", "the key count")
    values: dict[str, object] = {}
    for i in range(value_count):
        key = cursor.string(f"key {i} of {value_count:,}")
        values[key] = cursor.value(cursor.scalar("I", f"the type of {key}"), f"the value of {key}")
    entries = [_tensor_entry(cursor, i, tensor_count) for i in range(tensor_count)]
    alignment = values.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment < 1 or alignment & (alignment - 1):
        raise cursor.damaged(f"general.alignment is {alignment!r}, not a power of two")
    data_start = -(-cursor.pos // alignment) * alignment
    tensors = _place(path, entries, alignment, len(cursor.data) - data_start)
    architecture = values.get("general.architecture")
    if not isinstance(architecture, str):
        raise unreadable(path, "it does not say its architecture (general.architecture)")
    header = GGUFHeader(architecture, values, tensors)
    _check_layers(path, header)
    return header


def _tensor_entry(cursor: _Cursor, index: int, count: int) -> tuple[str, tuple[int, ...], int, int, int]:
    """(name, shape, type, offset, position of the entry) of tensor entry `index`."""
    at = cursor.pos
    name = cursor.string(f"the name of tensor {index} of {count:,}")
    dims = cursor.scalar("I", f"the dimension count of {name}")
    if not 1 <= dims <= MAX_DIMS:
        raise cursor.damaged(f"tensor {name} has {dims:,} dimensions (GGUF allows 1 to {MAX_DIMS})")
    shape = tuple(cursor.scalar("Q", f"a dimension of {name}") for _ in range(dims))
    kind, offset = cursor.scalar("I", f"the type of {name}"), cursor.scalar("Q", f"the data offset of {name}")
    return name, shape, kind, offset, at


def _place(path: Path, entries, alignment: int, data_bytes: int) -> tuple[TensorEntry, ...]:
    """Each tensor's size from its type and shape, checked to lie aligned, inside the file, apart from the others."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    tensors, seen = [], set()
    for name, shape, kind, offset, at in entries:
        where = f"it is damaged (tensor {name}, entry at byte {at:,})"
        if name in seen:
            raise unreadable(path, f"{where}: the name appears twice")
        seen.add(name)
        try:
            block, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType(kind)]
        except (ValueError, KeyError) as exc:
            raise unreadable(path, f"{where}: type {kind} is not a GGML tensor type") from exc
        elements = 1
        for n in shape:
            elements *= n
        if elements == 0 or shape[0] % block:
            raise unreadable(path, f"{where}: shape {list(shape)} is not whole blocks of {block} values")
        size = elements // block * block_bytes
        if offset % alignment:
            raise unreadable(path, f"{where}: data offset {offset:,} is not a multiple of the alignment {alignment}")
        if offset + size > data_bytes:
            raise unreadable(
                path,
                f"{where}: its {size:,} bytes at data offset {offset:,} run past the end of the file "
                f"({data_bytes:,} bytes of tensor data)",
            )
        tensors.append(TensorEntry(name, shape, elements, offset, size))
    ordered = sorted(tensors, key=lambda t: t.offset)
    for before, after in zip(ordered, ordered[1:], strict=False):
        if after.offset < before.offset + before.size:
            raise unreadable(path, f"it is damaged: the data of {after.name} overlaps {before.name}")
    return tuple(tensors)


def _check_layers(path: Path, header: GGUFHeader) -> None:
    """The layer count the metadata states is the number of layers the file holds tensors for."""
    if not header.tensors:
        raise unreadable(path, "it holds no tensors (its header says the tensor count is 0)")
    key = f"{header.architecture}.block_count"
    stated = header.values.get(key)
    if stated is None:
        return
    stored = {int(m.group(1)) for t in header.tensors if (m := _LAYER_TENSOR.match(t.name))}
    if not isinstance(stated, int) or stated != len(stored) or stored != set(range(len(stored))):
        raise unreadable(
            path,
            f"it is damaged or incomplete: {key} says {stated!r} layers but it holds the tensors "
            f"of {len(stored):,} ({len(header.tensors):,} tensors in all)",
        )
