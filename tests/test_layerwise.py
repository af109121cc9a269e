"""Layer by layer from disk (engine.model.layerwise, engine.pipeline.layer_pass) against the model held in memory.

A small synthetic Llama (6 layers, hidden 320, an untied head: 23 MB in float32) with a planted outlier
dimension is saved in bfloat16 safetensors shards. The same session requests run with the model in
memory and with its weights on disk must give the same numbers: scan statistics equal, quantize
summaries equal, perplexity equal to 1e-6 relative, every exported tensor of every method identical.
A pass reads each part of the model once and holds one decoder layer at a time; cancel leaves
nothing behind; bad checkpoints are refused with the file's name.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from int8wb.engine.checkpoint import export, staging
from int8wb.engine.errors import BadInput, Cancelled, ModelLoadError
from int8wb.engine.model.disk_weights import DiskWeights
from int8wb.engine.process.session import Session
from int8wb.engine.task import CallbackTask, Task
from int8wb.engine.vocabulary import FORMAT_METHODS, METHODS
from tests.support.tiny_models import read_tensors, save_tiny_llama

THRESHOLD = 4.0
OUTLIER_DIM = 7
SCAN = {"tokens": 256, "seq_len": 128, "batch_size": 2, "threshold": THRESHOLD}
EVAL = {"tokens": 512, "window": 128, "batch_size": 2}
LAYERS = 6


def _save_small(path: Path) -> Path:
    return save_tiny_llama(
        path,
        seed=1,
        tie=False,
        random_biases=True,
        max_shard_size="2MB",
        dtype="bfloat16",
        outlier_dim=OUTLIER_DIM,
        hidden=320,
        layers=LAYERS,
    )


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory) -> Path:
    path = _save_small(tmp_path_factory.mktemp("layerwise") / "small-llama")
    assert len(list(path.glob("*.safetensors"))) >= 4
    return path


def _session(path: Path, offload: str) -> Session:
    session = Session()
    session.load_model({"model": str(path), "device": "cpu", "offload": offload}, Task())
    return session


@pytest.fixture(scope="module")
def sessions(small_dir):
    """(in memory, on disk), each scanned and quantized with every method."""
    pair = (_session(small_dir, "none"), _session(small_dir, "disk"))
    for session in pair:
        session.scan_payload = session.scan(SCAN, Task())
        session.quantize_payload = session.quantize({"methods": list(METHODS), "threshold": THRESHOLD}, Task())
    return pair


def _without_measurements(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in ("memory", "seconds")} for row in rows]


def test_the_disk_session_holds_a_skeleton_and_says_so(sessions):
    memory, disk = sessions
    info = disk.loaded.describe()
    assert info["offload"]["mode"] == "disk" and info["offload"]["layers"] == LAYERS
    assert 0 < info["offload"]["peak_bytes"] < 10**9
    assert all(p.device.type == "meta" for p in disk.loaded.model.parameters())
    assert info["parameters"] == memory.loaded.describe()["parameters"]


def test_scan_statistics_are_equal(sessions):
    memory, disk = (s.scan_payload for s in sessions)
    assert len(memory["layers"]) == len(disk["layers"]) == 4 * LAYERS
    for a, b in zip(memory["layers"], disk["layers"]):
        assert a["names"] == b["names"] and a["out_features"] == b["out_features"]
        for key in ("absmax", "count_over", "hist"):
            assert np.array_equal(a[key], b[key]), (a["names"][0], key)
    assert memory["report"] == disk["report"]
    planted = [layer for layer in disk["layers"] if layer["kind"] == "attn_in"]
    assert all(OUTLIER_DIM in np.flatnonzero(layer["absmax"] > THRESHOLD) for layer in planted)


def test_quantize_summaries_are_equal(sessions):
    memory, disk = (_without_measurements(s.quantize_payload["models"]) for s in sessions)
    assert memory == disk
    assert next(row for row in disk if row["method"] == "llm-int8")["outlier_dims"] >= 3 * LAYERS


def test_perplexity_of_every_method_is_equal_to_one_in_a_million(sessions):
    memory, disk = (s.evaluate(EVAL, Task()) for s in sessions)
    assert [r["method"] for r in memory["rows"]] == [r["method"] for r in disk["rows"]] == ["baseline", *METHODS]
    for a, b in zip(memory["rows"], disk["rows"]):
        assert abs(b["perplexity"] / a["perplexity"] - 1) < 1e-6, (a["method"], a["perplexity"], b["perplexity"])
        assert (a["int8_bytes"], a["float_bytes"], a["tokens"]) == (b["int8_bytes"], b["float_bytes"], b["tokens"])


SAFETENSORS_EXPORTS = [(m, f) for f in ("bitsandbytes", "compressed-tensors") for m in FORMAT_METHODS[f]]


@pytest.mark.parametrize(("method", "fmt"), SAFETENSORS_EXPORTS)
def test_every_exported_tensor_is_identical(sessions, tmp_path, method, fmt):
    outs = [tmp_path / "memory", tmp_path / "disk"]
    for session, out in zip(sessions, outs):
        session.export({"method": method, "format": fmt, "out": str(out), "max_shard_size": 3_000_000}, Task())
    expected, actual = read_tensors(outs[0]), read_tensors(outs[1])
    assert expected.keys() == actual.keys()
    for name in expected:
        assert expected[name].dtype == actual[name].dtype and torch.equal(expected[name], actual[name]), name
    configs = [json.loads((out / "config.json").read_text())["quantization_config"] for out in outs]
    assert configs[0] == configs[1]
    assert sorted(p.name for p in outs[0].iterdir()) == sorted(p.name for p in outs[1].iterdir())
    if fmt != "bitsandbytes":
        return
    manifests = [json.loads((out / export.SIDECAR_NAME).read_text()) for out in outs]
    for manifest in manifests:
        manifest.pop("created")
        for entry in manifest["files"].values():
            entry.pop("bytes")  # the header's layout may differ; the tensors may not
    assert manifests[0] == manifests[1]


def test_gguf_is_written_from_a_model_in_memory(sessions, tmp_path):
    with pytest.raises(BadInput, match="export is written from a model in memory"):
        sessions[1].export({"method": "q8_0", "format": "gguf-q8_0", "out": str(tmp_path / "gguf")}, Task())
    assert list(tmp_path.iterdir()) == []


def test_one_pass_scans_quantizes_evaluates_and_exports_reading_each_part_once(
    small_dir, sessions, tmp_path, monkeypatch
):
    placed: list[str] = []
    original_place = DiskWeights.place

    def place(self, model, names, device, dtype):
        placed.extend(names)
        assert _placed_layers(model) <= 1, "more than one decoder layer held at once"
        original_place(self, model, names, device, dtype)

    monkeypatch.setattr(DiskWeights, "place", place)
    session = _session(small_dir, "disk")
    out = tmp_path / "one-pass"
    params = {"scan": SCAN, "methods": ["llm-int8", "vectorwise"], "threshold": THRESHOLD, "evaluate": EVAL}
    result = session.run_pass({**params, "export": {"out": str(out)}}, Task())
    state_names = list(session.loaded.model.state_dict())
    assert sorted(placed) == sorted(state_names)  # every tensor once (the untied head too)
    separate = {m["method"]: m for m in _without_measurements(sessions[1].quantize_payload["models"])}
    assert {m["method"]: m for m in _without_measurements(result["quantize"]["models"])} == {
        method: separate[method] for method in ("llm-int8", "vectorwise")
    }
    expected = {r["method"]: r["perplexity"] for r in sessions[0].evaluate({**EVAL, "methods": None}, Task())["rows"]}
    for row in result["evaluate"]["rows"]:
        assert abs(row["perplexity"] / expected[row["method"]] - 1) < 1e-6
    memory_out = tmp_path / "memory"
    sessions[0].export({"method": "llm-int8", "out": str(memory_out)}, Task())
    expected_tensors, actual = read_tensors(memory_out), read_tensors(out)
    assert expected_tensors.keys() == actual.keys()
    assert all(torch.equal(expected_tensors[k], actual[k]) for k in actual)
    assert all(p.device.type == "meta" for p in session.loaded.model.parameters())  # everything released


def _placed_layers(model) -> int:
    return sum(any(p.device.type != "meta" for p in block.parameters()) for block in model.model.layers)


def test_cancel_within_a_layer_leaves_no_temporary_files(small_dir, tmp_path):
    session = _session(small_dir, "disk")
    out = tmp_path / "out"

    def on_partial(kind, payload):
        if payload["layer"] == 2:  # layer 2 is scanned; its quantization and export are still to come
            task.cancel()

    task = CallbackTask(on_partial=on_partial)
    with pytest.raises(Cancelled):
        session.run_pass({"scan": SCAN, "methods": ["llm-int8"], "export": {"out": str(out)}}, task)
    assert list(tmp_path.iterdir()) == []
    assert all(p.device.type == "meta" for p in session.loaded.model.parameters())


def test_offload_auto_goes_to_disk_only_when_the_estimate_does_not_fit(small_dir, monkeypatch):
    from int8wb.engine.pipeline import on_disk

    monkeypatch.setattr(on_disk, "free_memory", lambda device: (10**6, "of RAM available"))
    info = _session(small_dir, "auto").loaded.describe()
    assert info["offload"]["mode"] == "disk"
    assert "layer by layer from disk" in info["offload"]["reason"] and "exceeds" in info["offload"]["reason"]
    monkeypatch.setattr(on_disk, "free_memory", lambda device: (10**12, "of RAM available"))
    info = _session(small_dir, "auto").loaded.describe()
    assert info["offload"]["mode"] == "none" and "fits in" in info["offload"]["reason"]


def _copy(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def test_tensor_names_that_do_not_match_the_config_are_refused_at_load(small_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    broken = _copy(small_dir, tmp_path / "renamed")
    index = json.loads((broken / export.WEIGHTS_INDEX_NAME).read_text())
    name = "model.layers.2.mlp.up_proj.weight"
    shard = broken / index["weight_map"][name]
    tensors = load_file(str(shard))
    tensors["model.layers.2.mlp.up.weight"] = tensors.pop(name)
    save_file(tensors, str(shard), metadata={"format": "pt"})
    index["weight_map"]["model.layers.2.mlp.up.weight"] = index["weight_map"].pop(name)
    (broken / export.WEIGHTS_INDEX_NAME).write_text(json.dumps(index))
    with pytest.raises(ModelLoadError, match="do not match.*up_proj"):
        _session(broken, "disk")


def test_a_missing_shard_is_refused_at_load(small_dir, tmp_path):
    broken = _copy(small_dir, tmp_path / "missing")
    sorted(broken.glob("*.safetensors"))[-1].unlink()
    with pytest.raises(ModelLoadError, match="is missing"):
        _session(broken, "disk")


def test_a_truncated_shard_is_refused_at_load(small_dir, tmp_path):
    """Its header says where each tensor's data lies; a shard cut short is refused before any layer is read."""
    broken = _copy(small_dir, tmp_path / "truncated")
    index = json.loads((broken / export.WEIGHTS_INDEX_NAME).read_text())
    shard = broken / index["weight_map"]["model.layers.4.mlp.down_proj.weight"]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(ModelLoadError, match=f"{shard.name} cannot be read \\(truncated or damaged\\)"):
        _session(broken, "disk")


def test_no_room_for_the_export_is_refused_before_any_layer_is_read(small_dir, tmp_path, monkeypatch):
    from collections import namedtuple

    session = _session(small_dir, "disk")
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(staging.shutil, "disk_usage", lambda folder: usage(10**9, 10**9, 1000))
    monkeypatch.setattr(DiskWeights, "place", lambda *args: pytest.fail("a layer was read"))
    with pytest.raises(BadInput, match="no space left on device.*nothing was written"):
        session.run_pass({"methods": ["vectorwise"], "export": {"out": str(tmp_path / "out")}}, Task())
    assert list(tmp_path.iterdir()) == []


def test_a_reopened_export_is_not_opened_layer_by_layer_and_modes_are_checked(sessions, tmp_path):
    out = tmp_path / "exported"
    sessions[0].export({"method": "vectorwise", "out": str(out)}, Task())
    with pytest.raises(BadInput, match="re-opened in memory"):
        _session(out, "disk")
    with pytest.raises(BadInput, match="offload must be one of"):
        _session(sessions[1].loaded.weights.directory, "sideways")
