"""Requests and files that used to run code, hold two models, or end as "internal" errors.

A model's own code runs only when the engine's starter allowed it; a second model replaces the
first instead of joining it; a device, context, memory need, decoder stack or corpus the engine
cannot serve is `bad_input` with a sentence that says why.
"""

from __future__ import annotations

import gc
import shutil
import sys
import tomllib
import tracemalloc
import weakref
from pathlib import Path

import pytest
import torch

from int8wb.engine.errors import BadInput
from int8wb.engine.model import corpus, limits
from int8wb.engine.model.layers import decoder_layers
from int8wb.engine.process.session import Session
from int8wb.engine.task import CallbackTask, Task
from tests.support.tiny_models import TinyLoaded, WordTokenizer, save_tiny_llama

REPO = Path(__file__).resolve().parent.parent
SLEEPY = "tests.support.engine_sessions:SleepySession"
EVIL_CODE = """
from pathlib import Path
Path({marker!r}).write_text("the model's own code ran")
raise ImportError("this module only shows that it was imported")
"""


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    """A tiny Llama saved as a Hugging Face directory (safetensors, config, tokenizer)."""
    return save_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny-llama")


@pytest.fixture
def model_with_its_own_code(tiny_dir, tmp_path):
    """A model directory whose config.json points transformers at a module that leaves a marker when imported."""
    import json

    directory = tmp_path / "model"
    shutil.copytree(tiny_dir, directory)
    marker = tmp_path / "marker"
    (directory / "evil_model.py").write_text(EVIL_CODE.format(marker=str(marker)))
    config = json.loads((directory / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "evil_model.EvilForCausalLM"}
    (directory / "config.json").write_text(json.dumps(config))
    return directory, marker


# --- finding 2: remote code is the engine starter's choice, never a request's ----------------------


def test_a_request_cannot_turn_on_remote_code(model_with_its_own_code):
    directory, marker = model_with_its_own_code
    with pytest.raises(BadInput, match="trust_remote_code cannot be set by a request"):
        Session().load_model({"model": str(directory), "trust_remote_code": True, "device": "cpu"}, Task())
    assert not marker.exists()
    Session().load_model({"model": str(directory), "device": "cpu"}, Task())  # transformers' own Llama
    assert not marker.exists()


def test_the_engines_starter_can_allow_remote_code(model_with_its_own_code, tmp_path, monkeypatch):
    from transformers import dynamic_module_utils

    from int8wb.engine.errors import ModelLoadError

    monkeypatch.setattr(dynamic_module_utils, "HF_MODULES_CACHE", str(tmp_path / "modules"))
    monkeypatch.setattr(sys, "path", list(sys.path))
    directory, marker = model_with_its_own_code
    with pytest.raises(ModelLoadError):
        Session(allow_remote_code=True).load_model({"model": str(directory), "device": "cpu"}, Task())
    assert marker.read_text() == "the model's own code ran"


@pytest.mark.parametrize("allowed", [False, True])
def test_the_local_engine_runs_remote_code_only_when_its_starter_says_so(allowed):
    from int8wb.engine.link.client import EngineClient

    with EngineClient() as client:
        client.start_local(timeout_s=60, session=SLEEPY, allow_remote_code=allowed)
        assert client.call("scan", {}, timeout_s=30)["remote_code"] is allowed


def test_torch_releases_whose_weights_only_load_runs_code_are_excluded():
    from packaging.requirements import Requirement

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    (torch_requirement,) = [Requirement(r) for r in project["dependencies"] if Requirement(r).name == "torch"]
    assert not torch_requirement.specifier.contains("2.5.1")
    assert torch_requirement.specifier.contains("2.6.0") and torch_requirement.specifier.contains(torch.__version__)


# --- finding 9: a new model replaces the old one, it does not join it -------------------------------


def test_the_old_model_is_released_before_the_next_one_loads(tiny_dir):
    session = Session()
    session.load_model({"model": str(tiny_dir), "device": "cpu"}, Task())
    session.quantize({"methods": ["vectorwise"], "threshold": 6.0}, Task())
    old_model = weakref.ref(session.loaded.model)
    old_variant = weakref.ref(session.quantized["vectorwise"].model)
    alive_while_loading = []

    def on_progress(fraction, message):
        gc.collect()
        alive_while_loading.append(old_model() is not None or old_variant() is not None)

    session.load_model({"model": str(tiny_dir), "device": "cpu"}, CallbackTask(on_progress=on_progress))
    assert alive_while_loading and not any(alive_while_loading)
    assert session.loaded is not None and session.quantized == {}


# --- finding 11: what the engine cannot serve is bad input --------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
@pytest.mark.parametrize("device", ["cuda", "cuda:0", "cuda:3"])
def test_a_cuda_device_on_a_machine_without_one_is_bad_input(device):
    with pytest.raises(BadInput, match="no CUDA device"):
        Session().load_model({"device": device}, Task())


@pytest.mark.parametrize("device", ["banana", "tpu", "cuda:x", "cpu:zero"])
def test_an_unknown_device_is_bad_input(device):
    with pytest.raises(BadInput, match="unknown device"):
        Session().load_model({"device": device}, Task())


def test_a_model_without_a_decoder_stack_is_bad_input():
    with pytest.raises(BadInput, match="no stack of decoder layers"):
        decoder_layers(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)))


def tiny_gpt2(positions: int = 64) -> TinyLoaded:
    """Learned position embeddings: a position past `positions` has no embedding at all."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=256, n_positions=positions, n_embd=32, n_layer=2, n_head=2)
    return TinyLoaded(GPT2LMHeadModel(config).eval(), WordTokenizer(256))


def test_sequences_longer_than_the_context_are_bad_input():
    from int8wb.engine.measure import evaluate
    from int8wb.engine.quant import scan

    loaded = tiny_gpt2(positions=64)
    with pytest.raises(BadInput, match="longer than the model's context of 64"):
        scan.run({"tokens": 512, "seq_len": 128}, Task(), loaded)
    with pytest.raises(BadInput, match="longer than the model's context of 64"):
        evaluate.run({"tokens": 512, "window": 128}, Task(), loaded, {})
    assert scan.run({"tokens": 256, "seq_len": 64, "batch_size": 2}, Task(), loaded).n_tokens == 256


def test_activations_beyond_memory_are_bad_input():
    free = limits.available_bytes("cpu")
    assert free is not None and free > 0
    with pytest.raises(BadInput, match="GB are free on cpu"):
        limits.check_fits(2 * free, "cpu", "a scan of 10^12 tokens", "ask for fewer tokens")
    model = tiny_gpt2().model
    tokens_beyond = 2 * free // (2 * model.config.n_embd * 4)
    with pytest.raises(BadInput, match="ask for fewer tokens"):
        limits.check_scan(model, 64, 1, tokens_beyond, "cpu")
    limits.check_scan(model, 64, 1, 4096, "cpu")  # what fits passes


def test_the_corpus_is_read_only_as_far_as_the_tokens_asked_for(tmp_path):
    path = tmp_path / "big.txt"
    paragraph = ("All work and no play makes a dull model. " * 20 + "\n\n").encode()
    with open(path, "wb") as handle:
        for _ in range(40 * 2**20 // len(paragraph)):
            handle.write(paragraph)
        handle.write(b"\xff\xfe not UTF-8 at the very end")  # never reached for a few tokens
    tracemalloc.start()
    try:
        split = corpus.load_split(str(path))
        calibration = corpus.tokenize(WordTokenizer(256), split.calibration, 1024)
        evaluation = corpus.tokenize(WordTokenizer(256), split.evaluation, 1024)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert calibration.numel() == evaluation.numel() == 1024
    assert peak < 8 * 2**20, f"reading 2 x 1024 tokens of a 40 MB corpus took {peak / 2**20:.0f} MiB"
    with pytest.raises(BadInput, match="not UTF-8 text.*at byte"):
        corpus.tokenize(WordTokenizer(256), split.evaluation, 10**9)


def _engine_arguments(pid: int) -> list[str]:
    with open(f"/proc/{pid}/cmdline") as cmdline:
        return cmdline.read().split("\0")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the engine's command line from /proc")
def test_the_window_setting_decides_whether_its_local_engine_may_run_model_code(make_workbench, qtbot):
    window = make_workbench(start_engine=False)
    assert not window.act_remote_code.isChecked()
    window.act_remote_code.trigger()
    assert window.settings.value("engine/allow_remote_code", type=bool) is True
    window.start_engine()
    qtbot.waitUntil(lambda: window.client.state.value == "ready", timeout=60_000)
    assert "--allow-remote-code" in _engine_arguments(window.client.pid)
    window.act_remote_code.trigger()
    window.workbench.restart_engine()
    qtbot.waitUntil(lambda: window.client.state.value == "ready", timeout=60_000)
    assert "--allow-remote-code" not in _engine_arguments(window.client.pid)
