"""Checks every model source passes before a model is built from it or a byte of weights is read.

A model is built from what its config says: a config that states a million layers builds a million
layers (a hang that grows without bound), one that disagrees with the stored weights fails deep in a
library or loads random weights. So the numbers a config states are checked against what the files
hold, first:

- every file read is a regular file: a FIFO blocks `open()` for ever, a device never ends;
- config.json is a JSON object of bounded size and nesting;
- the layer count is at most the number of tensors stored (every layer stores at least one), or, for a
  plan from a config alone, at most MAX_LAYERS;
- the model built on the meta device (no memory) stores no tensor under a shape other than its own,
  and needs no more values than the files hold: hidden sizes are bounded by the weights' size.

GGUF files have their own header checks (engine.model.gguf_header) and then the last one here.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from int8wb.engine.errors import ModelLoadError

LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers")
# A plan from a config alone has no weights to bound the layer count by: 1,024 layers is eight times the
# deepest published model (Llama 3.1 405B has 126); `int8wb plan --config` of 1,024 Llama-7B-sized layers
# takes 11.5 s and 441 MB on two shared cores, where 10^6 layers ran past 90 s and 3 GB.
MAX_LAYERS = 1024
MAX_CONFIG_BYTES = 16 * 2**20  # config.json of published models: a few KB


def regular_file(path: Path, error: type[Exception] = ModelLoadError) -> Path:
    """`path` itself, if it is a regular file (or a link to one); refused before anything opens it."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise error(f"{path} cannot be read: {exc.strerror or exc}") from exc
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "a device or socket"
        raise error(f"{path} is {kind}, not a regular file: a model is read from regular files")
    return path


def refuse_special_files(directory: Path) -> None:
    """Every file in a model directory is regular: libraries open whichever they look for, and a FIFO hangs them."""
    for entry in directory.iterdir():
        if not entry.is_dir():
            regular_file(entry)


def read_json_object(path: Path, error: type[Exception] = ModelLoadError) -> dict[str, Any]:
    """The JSON object in `path`; `error` (naming the file) when it is not a readable, bounded JSON object."""
    size = os.stat(regular_file(path, error)).st_size
    if size > MAX_CONFIG_BYTES:
        raise error(f"{path} is {size:,} bytes: more than the {MAX_CONFIG_BYTES:,} a JSON config or index may be")
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except RecursionError as exc:
        raise error(f"{path} is JSON nested too deeply to be a config") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error(f"{path} is not a readable JSON file: {exc}") from exc
    if not isinstance(data, dict):
        raise error(f"{path} holds JSON but not an object of fields")
    return data


def check_layer_count(config: dict[str, Any], limit: int, source: str, why: str, error=ModelLoadError) -> None:
    """The layer count `config` states (if it states one) is a whole number from 1 to `limit`."""
    key = next((k for k in LAYER_KEYS if config.get(k) is not None), None)
    if key is None:
        return
    count = config[key]
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise error(f"{source} has {key} = {count!r}; it must be a positive whole number")
    if count > limit:
        raise error(f"{source} has {key} = {count:,}, more than {limit:,}: {why}")


def check_directory_config(directory: Path, stored_tensors: int | None) -> dict[str, Any]:
    """config.json of a model directory, with its layer count bounded by the `stored_tensors` (None: unknown)."""
    refuse_special_files(directory)
    config_path = directory / "config.json"
    config = read_json_object(config_path)
    if stored_tensors is None:
        why = f"no published model is that deep ({MAX_LAYERS:,} is the bound when the weights cannot be counted)"
        check_layer_count(config, MAX_LAYERS, str(config_path), why)
    else:
        why = f"the checkpoint stores {stored_tensors:,} tensors, and every layer stores at least one"
        check_layer_count(config, max(stored_tensors, 1), str(config_path), why)
    return config


def check_against_stored(skeleton, shapes: dict[str, tuple[int, ...]], elements: int | None, source: str) -> None:
    """The meta model `skeleton` fits what `source` stores: its tensors' shapes and its total size.

    `shapes` maps the stored names to their shapes (names transformers renames while loading may differ:
    those are not compared); `elements` counts every value stored (None: not comparable, packed values).
    """
    tied = set(getattr(skeleton, "all_tied_weights_keys", None) or {})
    needed = 0
    for name, tensor in skeleton.state_dict().items():
        if name in tied:
            continue
        needed += tensor.numel()
        stored = shapes.get(name)
        if stored is not None and tuple(stored) != tuple(tensor.shape):
            raise ModelLoadError(
                f"{source} stores {name} with shape {list(stored)}, but the model its config describes needs "
                f"{list(tensor.shape)}: the config does not match the weights"
            )
    if elements is not None and needed > elements:
        raise ModelLoadError(
            f"the model {source} describes has {needed:,} weights, but it stores only {elements:,} values: "
            "tensors are missing or the sizes its config states are wrong"
        )
