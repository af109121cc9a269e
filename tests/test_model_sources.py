"""Every model source is checked before anything is built from it (engine.model.source_checks, gguf_header).

Damaged GGUF files (byte-patched copies of a tiny one written with the `gguf` package), model directories
whose config disagrees with their weights, FIFOs where files belong and configs that state absurd sizes:
each is a ModelLoadError or BadInput that names the file, quickly, with nothing cached.
"""

from __future__ import annotations

import json
import os
import struct
import threading
import time
from pathlib import Path

import pytest

from int8wb.engine.cli import EXIT_USER_ERROR, main
from int8wb.engine.errors import BadInput, ModelLoadError
from int8wb.engine.model import gguf_header
from int8wb.engine.pipeline import loading
from int8wb.engine.task import Task
from tests.support.tiny_gguf import write_tiny_gguf
from tests.support.tiny_models import save_tiny_llama


@pytest.fixture(scope="module")
def tiny_gguf_bytes(tmp_path_factory) -> bytes:
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf").read_bytes()


def patched(data: bytes, at: int, fmt: str, value: int) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, at, value)
    return bytes(out)


def value_at(data: bytes, key: str) -> int:
    """Where the value of metadata `key` begins: after the key's bytes and its 4-byte type."""
    return data.index(key.encode()) + len(key) + 4


def offset_at(data: bytes, tensor: str, dims: int) -> int:
    """Where the data offset of `tensor`'s header entry is: after its name, dimension count, dimensions and type."""
    return data.index(tensor.encode()) + len(tensor) + 4 + 8 * dims + 4


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("INT8WB_CACHE_DIR", str(root))
    return root


def load(source, **params):
    return loading.load({"model": str(source), "device": "cpu", **params}, Task())


def conversions(cache: Path) -> list[Path]:
    return [p for p in cache.iterdir() if not p.name.startswith(".")] if cache.exists() else []


def test_the_default_models_header_passes(tmp_path):
    header = gguf_header.read(loading.default_gguf_path())
    assert header.architecture == "llama"
    assert header.values["llama.block_count"] == 30
    assert header.stored_elements() > 100_000_000


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: patched(d, 8, "<Q", 0), "holds no tensors"),
        (lambda d: patched(d, 8, "<Q", 1), "says 2 layers but it holds the tensors of 0"),
        (lambda d: patched(d, offset_at(d, "token_embd.weight", 2), "<Q", 2**64 - 32), "run past the end"),
        (lambda d: patched(d, offset_at(d, "token_embd.weight", 2), "<Q", 1), "not a multiple of the alignment"),
        (lambda d: patched(d, value_at(d, "llama.block_count"), "<I", 2**32 - 1), "says 4294967295 layers"),
        (lambda d: patched(d, 24, "<Q", 2**60), "is damaged at byte 24: key 0"),
        (lambda d: d[: len(d) // 2], "run past the end"),
    ],
    ids=["no-tensors", "one-tensor", "offset-wraps", "offset-misaligned", "huge-block-count", "key-length", "cut"],
)
def test_a_damaged_gguf_is_refused_and_not_cached(tmp_path, cache, tiny_gguf_bytes, mutate, message):
    damaged = tmp_path / "damaged.gguf"
    damaged.write_bytes(mutate(tiny_gguf_bytes))
    started = time.perf_counter()
    with pytest.raises(ModelLoadError, match="GGUF file") as caught:
        load(damaged)
    assert message in str(caught.value) and str(damaged) in str(caught.value)
    assert time.perf_counter() - started < 5
    assert conversions(cache) == []


def test_a_gguf_whose_sizes_outgrow_its_tensors_is_refused_before_allocating(tmp_path, cache, tiny_gguf_bytes):
    import tracemalloc

    damaged = tmp_path / "wide.gguf"
    damaged.write_bytes(patched(tiny_gguf_bytes, value_at(tiny_gguf_bytes, "llama.embedding_length"), "<I", 10**6))
    tracemalloc.start()
    try:
        with pytest.raises(ModelLoadError, match="stores only") as caught:
            load(damaged)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(damaged) in str(caught.value)
    assert peak < 200 * 2**20  # the model the metadata describes would take 64 x 10^6 x 4 bytes for its embedding
    assert conversions(cache) == []


def test_a_gguf_with_a_tensor_missing_is_refused_by_the_whole_model_conversion(tmp_path, cache, tiny_gguf_bytes):
    """A renamed tensor keeps the counts right, so the streaming conversion hands the file to transformers'
    whole-model one, which loads a missing tensor at random: its loading info must refuse it."""
    damaged = tmp_path / "renamed.gguf"
    damaged.write_bytes(tiny_gguf_bytes.replace(b"blk.1.ffn_up.weight", b"blk.1.ffn_uq.weight"))
    with pytest.raises(ModelLoadError, match="lacks 1 tensors .* the first model.layers.1.mlp.up_proj.weight"):
        load(damaged)
    assert conversions(cache) == []


def unblock(fifo: Path) -> None:
    """Open the FIFO's other end, so that a reader blocked in open() (a failing test) returns."""
    try:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        pass


def finishes(call, fifo: Path, seconds: float = 20.0):
    """The exception `call` raises, failing the test if it is still running after `seconds` (blocked on `fifo`)."""
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:  # the outcome is what the test asserts
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    hung = thread.is_alive()
    unblock(fifo)
    assert not hung, f"still running after {seconds} s: blocked on {fifo}"
    assert outcome, "no error was raised"
    return outcome[0]


def test_a_fifo_named_like_a_gguf_file_is_refused(tmp_path, cache):
    fifo = tmp_path / "model.gguf"
    os.mkfifo(fifo)
    error = finishes(lambda: load(fifo), fifo)
    assert isinstance(error, ModelLoadError) and "FIFO" in str(error)


@pytest.fixture(scope="module")
def tiny_dir_template(tmp_path_factory) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("dir") / "tiny", max_shard_size="100KB")


@pytest.fixture
def tiny_dir(tiny_dir_template, tmp_path) -> Path:
    import shutil

    return Path(shutil.copytree(tiny_dir_template, tmp_path / "tiny"))


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("offload", ["disk", "none"])
def test_a_config_that_disagrees_with_the_stored_shapes_is_refused(tiny_dir, capsys, offload):
    edit_json(tiny_dir / "config.json", lambda c: c.update(intermediate_size=c["intermediate_size"] * 2))
    code = main(["scan", "--model", str(tiny_dir), "--offload", offload, "--device", "cpu", "--quiet"])
    err = capsys.readouterr().err
    assert code == EXIT_USER_ERROR and "Traceback" not in err
    assert "mlp.gate_proj.weight with shape [128, 64]" in err and "[256, 64]" in err


@pytest.mark.parametrize(
    "layers, message",
    [
        (10**6, "num_hidden_layers = 1,000,000, more than 1,024"),
        (500, r"num_hidden_layers = 500, more than \d+: the checkpoint stores \d+ tensors"),
    ],
)
def test_a_config_of_too_many_layers_is_refused_before_the_skeleton_is_built(tiny_dir, layers, message):
    edit_json(tiny_dir / "config.json", lambda c: c.update(num_hidden_layers=layers))
    started = time.perf_counter()
    with pytest.raises(ModelLoadError, match=message):
        load(tiny_dir, offload="auto")
    assert time.perf_counter() - started < 5


def test_a_non_string_file_name_in_the_index_is_refused(tiny_dir):
    index = tiny_dir / "model.safetensors.index.json"
    edit_json(index, lambda c: c["weight_map"].update({next(iter(c["weight_map"])): 3}))
    with pytest.raises(ModelLoadError, match="not the name of a file beside the index"):
        load(tiny_dir, offload="disk")


def test_an_index_that_points_outside_the_directory_is_refused(tiny_dir):
    index = tiny_dir / "model.safetensors.index.json"
    edit_json(index, lambda c: c["weight_map"].update({next(iter(c["weight_map"])): "../elsewhere.safetensors"}))
    with pytest.raises(ModelLoadError, match="not the name of a file beside the index"):
        load(tiny_dir, offload="disk")


@pytest.mark.parametrize("offload", ["disk", "none"])
def test_a_fifo_as_the_weights_file_is_refused_before_it_is_opened(tiny_dir, offload):
    shard = sorted(tiny_dir.glob("*.safetensors"))[0]
    shard.unlink()
    os.mkfifo(shard)
    error = finishes(lambda: load(tiny_dir, offload=offload), shard)
    assert isinstance(error, ModelLoadError) and f"{shard} is a FIFO" in str(error)


def test_a_deeply_nested_config_is_refused(tiny_dir, tmp_path, capsys):
    nested = "[" * 100_000 + "]" * 100_000
    (tiny_dir / "config.json").write_text('{"model_type": "llama", "x": ' + nested + "}")
    with pytest.raises(ModelLoadError, match="nested too deeply"):
        load(tiny_dir)
    config = tmp_path / "config.json"
    config.write_text(nested)
    code = main(["plan", "--config", str(config)])
    err = capsys.readouterr().err
    assert code == EXIT_USER_ERROR and "nested too deeply" in err and "Traceback" not in err


def test_a_plan_from_a_config_of_a_million_layers_is_refused(tmp_path, capsys):
    from int8wb.engine.planning import plan_memory

    config = tmp_path / "config.json"
    fields = {"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "vocab_size": 256}
    config.write_text(json.dumps({**fields, "num_hidden_layers": 10**6, "intermediate_size": 128}))
    started = time.perf_counter()
    code = main(["plan", "--config", str(config)])
    err = capsys.readouterr().err
    assert code == EXIT_USER_ERROR and "more than 1,024" in err and "Traceback" not in err
    assert time.perf_counter() - started < 5
    config.write_text(json.dumps({**fields, "num_hidden_layers": 1025, "intermediate_size": 128}))
    with pytest.raises(BadInput, match="num_hidden_layers = 1,025"):
        plan_memory.run({"config": str(config)}, Task())
