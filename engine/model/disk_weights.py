"""Where the weights of a model come from when it runs layer by layer: its safetensors files on disk.

A model skeleton built on the meta device (accelerate's `init_empty_weights`) has every parameter's
name, shape and dtype but no data. `DiskWeights` knows which file holds each tensor (from the
checkpoint's index, or from the files' headers) and places the tensors of one part of the model
(the embeddings, one decoder layer, the head) on the compute device with accelerate's
`set_module_tensor_to_device`, reading them from the memory-mapped files with safetensors'
`safe_open`; `release` puts the part's original meta tensors back, so the data is freed and the
skeleton (tied weights included) is as it was. Files are opened when a part needs them and closed
when the part is placed: pages of a mapping count as resident while it is open.

`ResidentWeights` is the same interface for a model whose weights are all in memory already.

Bad input is found here and named, when the model is opened: a tensor the model needs that no file
holds (names that do not match config.json), an index that names files outside the directory or
tensors its files do not hold, a file it lists that is missing, a file that is not a regular file
(a FIFO would block `open()`), a file whose header is damaged or says its data runs past its end. A
file damaged after that is named when the part that needs it is read.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from int8wb.engine.errors import ModelLoadError
from int8wb.engine.model.source_checks import read_json_object, regular_file

WEIGHTS_INDEX_NAME = "model.safetensors.index.json"


class ResidentWeights:
    """The weights of a model already in memory: nothing to place or release."""

    resident = True

    def place(self, model, names: list[str], device: str, dtype) -> None:
        pass

    def release(self, model, names: list[str]) -> None:
        pass


class DiskWeights:
    """The safetensors files of a model directory, read one part of the model at a time."""

    resident = False

    def __init__(self, directory: Path, file_of: dict[str, str], tied: dict[str, str]) -> None:
        self.directory = directory
        self.file_of = file_of  # tensor name -> file name
        self.tied = tied  # a tied tensor's name -> the name the checkpoint stores it under
        self.originals: dict[str, Any] = {}  # name -> the skeleton's meta tensor, while placed

    @classmethod
    def open(cls, directory: Path, skeleton) -> DiskWeights:
        """The checkpoint of `directory`, checked against the tensors `skeleton` expects."""
        tied = dict(getattr(skeleton, "all_tied_weights_keys", None) or {})
        stored = stored_tensors(directory)
        weights = cls(directory, {name: filename for name, (filename, _) in stored.items()}, tied)
        weights.check_names(skeleton)
        return weights

    def check_names(self, skeleton) -> None:
        """Every tensor the model built from config.json needs is in the checkpoint, under that name."""
        needed = [key for key in skeleton.state_dict() if key not in self.tied]
        missing = [key for key in needed if key not in self.file_of]
        if missing:
            unexpected = sorted(set(self.file_of) - set(needed))
            example = f"; the checkpoint has names such as {unexpected[0]!r}" if unexpected else ""
            raise ModelLoadError(
                f"the tensor names in {self.directory} do not match the model its config.json describes: "
                f"{missing[0]!r} is not in the checkpoint ({len(missing)} missing in all){example}. "
                "Layer-by-layer mode reads the names as they are; load it in memory (--offload none), where "
                "transformers maps legacy names"
            )

    def place(self, model, names: list[str], device: str, dtype) -> None:
        """Read the tensors `names` of `model` from disk and put them on `device` (floating point in `dtype`)."""
        from accelerate.utils import set_module_tensor_to_device

        handles: dict[str, Any] = {}
        try:
            for name in names:
                key = self.tied.get(name, name) if name not in self.file_of else name
                tensor = self._read(handles, key)
                wanted = dtype if tensor.dtype.is_floating_point else tensor.dtype
                tensor = tensor.to(device=device, dtype=wanted, copy=True)  # never a view into the mapping
                self.originals[name] = _get_tensor(model, name)
                set_module_tensor_to_device(model, name, device, value=tensor, clear_cache=False)
        finally:
            handles.clear()  # closes the files: their mapped pages stop counting as resident

    def release(self, model, names: list[str]) -> None:
        """Put the skeleton's meta tensors back in place of `names`; the data is freed."""
        for name in names:
            original = self.originals.pop(name, None)
            if original is not None:
                owner_name, _, leaf = name.rpartition(".")
                setattr(model.get_submodule(owner_name) if owner_name else model, leaf, original)

    def _read(self, handles: dict[str, Any], key: str):
        from safetensors import safe_open

        filename = self.file_of[key]
        path = self.directory / filename
        try:
            if filename not in handles:
                handles[filename] = safe_open(str(path), framework="pt")
            return handles[filename].get_tensor(key)
        except FileNotFoundError as exc:
            raise ModelLoadError(f"{path} is missing: the checkpoint lists it but it is not there") from exc
        except Exception as exc:  # safetensors reports a cut or damaged file as a header or buffer error
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelLoadError(f"{path} cannot be read (truncated or damaged): {reason}") from exc


def _get_tensor(model, name: str):
    owner_name, _, leaf = name.rpartition(".")
    return getattr(model.get_submodule(owner_name) if owner_name else model, leaf)


def stored_tensors(directory: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Tensor name -> (file name, shape), from the headers of the checkpoint's files (those its index lists,
    else every *.safetensors file); the index is checked against the headers, and nothing but headers is read."""
    index = directory / WEIGHTS_INDEX_NAME
    if index.is_file():
        file_of = _index_map(index)
        files = sorted(set(file_of.values()))
    else:
        file_of, files = None, sorted(path.name for path in directory.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"{directory} has no *.safetensors weights: layer-by-layer mode reads safetensors only")
    stored: dict[str, tuple[str, tuple[int, ...]]] = {}
    for filename in files:
        stored.update({name: (filename, shape) for name, shape in _header_shapes(directory / filename)})
    if file_of is not None:
        wrong = [name for name, filename in file_of.items() if stored.get(name, ("",))[0] != filename]
        if wrong:
            raise ModelLoadError(
                f"{index} says {wrong[0]!r} is in {file_of[wrong[0]]}, which does not hold it "
                f"({len(wrong)} such entries): the index does not match the files"
            )
        stored = {name: stored[name] for name in file_of}
    return stored


def _index_map(index: Path) -> dict[str, str]:
    """The weight map of a sharded checkpoint's index: tensor names to file names in the same directory."""
    weight_map = read_json_object(index).get("weight_map")
    if not isinstance(weight_map, dict):
        raise ModelLoadError(f"{index} is not a safetensors index: it has no weight_map object")
    for name, filename in weight_map.items():
        if not isinstance(filename, str) or not filename or Path(filename).name != filename or filename == "..":
            raise ModelLoadError(
                f"{index} lists {name!r} in {filename!r}, which is not the name of a file beside the index"
            )
    missing = sorted({name for name in weight_map.values() if not (index.parent / name).exists()})
    if missing:
        raise ModelLoadError(
            f"{index.parent / missing[0]} is missing: {index.name} lists {len(missing)} shard(s) that are not there"
        )
    return dict(weight_map)


def _header_shapes(path: Path):
    """(name, shape) of every tensor in the safetensors file `path`, from its header alone."""
    from safetensors import safe_open

    regular_file(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            return [(name, tuple(handle.get_slice(name).get_shape())) for name in handle.keys()]
    except Exception as exc:  # safetensors reports a cut or damaged header in several ways
        raise ModelLoadError(f"could not load the model: {path} cannot be read (truncated or damaged): {exc}") from exc


def stored_elements(stored: dict[str, tuple[str, tuple[int, ...]]]) -> int:
    """How many values the checkpoint `stored` (stored_tensors) holds in all."""
    return sum(math.prod(shape) for _, shape in stored.values())
