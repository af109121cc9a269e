"""Export and re-open as an unlucky user or an attacker would use them.

Overwrite replaces only an earlier export, never the source model; a folder that appears while
exporting survives; what killed exports left is cleaned up (and only that); a full disk is said
as such; the umask is never touched; a sidecar cannot send re-opening outside its folder.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from int8wb.engine.checkpoint import export, staging
from int8wb.engine.errors import BadInput, ModelLoadError
from int8wb.engine.process.session import Session
from int8wb.engine.task import Task
from tests.support.tiny_gguf import write_tiny_gguf
from tests.support.tiny_models import save_tiny_llama

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    """A tiny Llama saved as a Hugging Face directory (safetensors, config, tokenizer)."""
    return save_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny-llama")


@pytest.fixture(scope="module")
def vectorwise_session(tiny_dir) -> Session:
    session = Session()
    session.load_model({"model": str(tiny_dir), "device": "cpu"}, Task())
    session.quantize({"methods": ["vectorwise"], "threshold": 6.0}, Task())
    return session


def user_folder(path: Path) -> Path:
    path.mkdir()
    (path / "thesis.tex").write_text("years of work")
    (path / "data").mkdir()
    (path / "data" / "results.csv").write_text("1,2,3")
    return path


def listing(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


# --- finding 3: overwrite replaces only an earlier export, and never the source -------------------


def test_overwrite_refuses_a_folder_that_is_not_an_export(vectorwise_session, tmp_path):
    mine = user_folder(tmp_path / "mine")
    before = listing(mine)
    with pytest.raises(BadInput, match="not an export of this workbench"):
        vectorwise_session.export({"method": "vectorwise", "out": str(mine), "overwrite": True}, Task())
    assert listing(mine) == before


@pytest.mark.parametrize("where", ["same", "inside", "around"])
def test_an_export_never_goes_over_into_or_around_its_source(vectorwise_session, tiny_dir, tmp_path, where):
    source = tmp_path / "model"
    shutil.copytree(tiny_dir, source)
    session = Session()
    session.load_model({"model": str(source), "device": "cpu"}, Task())
    session.quantize({"methods": ["vectorwise"], "threshold": 6.0}, Task())
    before = listing(source)
    out = {"same": source, "inside": source / "int8", "around": tmp_path}[where]
    with pytest.raises(BadInput, match="source model"):
        session.export({"method": "vectorwise", "out": str(out), "overwrite": True}, Task())
    assert listing(source) == before


def test_the_layer_by_layer_export_never_replaces_its_source(tiny_dir, tmp_path):
    source = tmp_path / "model"
    shutil.copytree(tiny_dir, source)
    before = listing(source)
    session = Session()
    session.load_model({"model": str(source), "device": "cpu", "offload": "disk"}, Task())
    params = {"methods": ["vectorwise"], "export": {"out": str(source), "overwrite": True}}
    with pytest.raises(BadInput, match="source model"):
        session.run_pass(params, Task())
    assert listing(source) == before


def test_a_reopened_export_is_not_exported_over_itself(vectorwise_session, tmp_path):
    out = tmp_path / "export"
    vectorwise_session.export({"method": "vectorwise", "out": str(out)}, Task())
    reopened = Session()
    reopened.load_model({"model": str(out), "device": "cpu"}, Task())
    with pytest.raises(BadInput, match="source model"):
        reopened.export({"method": "vectorwise", "out": str(out), "overwrite": True}, Task())
    assert (out / export.SIDECAR_NAME).is_file()


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_folder_that_appears_while_exporting_is_left_alone(vectorwise_session, tmp_path, monkeypatch, overwrite):
    out = tmp_path / "export"
    real_write_json = export.write_json

    def write_json_then_someone_creates_the_target(path, value):
        real_write_json(path, value)
        if path.name == export.SIDECAR_NAME and not out.exists():
            user_folder(out)

    monkeypatch.setattr(export, "write_json", write_json_then_someone_creates_the_target)
    with pytest.raises(BadInput, match="nothing was replaced"):
        vectorwise_session.export({"method": "vectorwise", "out": str(out), "overwrite": overwrite}, Task())
    assert listing(out) == {"thesis.tex": b"years of work", "data/results.csv": b"1,2,3"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


# --- finding 7: what killed writers left is removed, and nothing else ----------------------------


def test_stale_staging_folders_are_removed_and_nothing_else(vectorwise_session, tmp_path):
    out = tmp_path / "export"
    long_ago = time.time() - 2 * staging.STALE_AFTER_S

    def folder(name: str, age: float | None = long_ago) -> Path:
        path = tmp_path / name
        path.mkdir()
        (path / "model.safetensors").write_bytes(b"half")
        if age is not None:
            os.utime(path, (age, age))
        return path

    stale = [folder(".export.partial-abcdefgh"), folder(".export.partial-0123456789ab")]
    kept = [
        folder(".export.partial-0123456789cd", age=None),  # too young: someone may be starting
        folder(".export.partial-x"),  # not our naming
        folder(".other.partial-abcdefgh"),  # another target's
        folder("export.partial-abcdefgh"),  # not hidden: not ours
    ]
    busy = folder(".export.partial-fedcba987654")
    with staging.held(busy):
        vectorwise_session.export({"method": "vectorwise", "out": str(out)}, Task())
    assert not any(path.exists() for path in stale)
    assert all(path.is_dir() for path in kept + [busy])


def test_an_old_export_set_aside_by_a_killed_writer_is_put_back(vectorwise_session, tmp_path):
    out = tmp_path / "export"
    vectorwise_session.export({"method": "vectorwise", "out": str(out)}, Task())
    before = listing(out)
    holder = tmp_path / ".export.old-abcdefgh"
    holder.mkdir()
    os.rename(out, holder / "export")  # killed between moving the old export aside and renaming the new one in
    long_ago = time.time() - 2 * staging.STALE_AFTER_S
    os.utime(holder, (long_ago, long_ago))
    assert staging.remove_stale(out) == [holder]
    assert listing(out) == before and not holder.exists()


def test_two_engines_converting_the_same_gguf_at_once_share_one_conversion(tmp_path, monkeypatch):
    from int8wb.engine.pipeline import loading

    monkeypatch.setenv("INT8WB_CACHE_DIR", str(tmp_path / "cache"))
    gguf = write_tiny_gguf(tmp_path / "model.gguf")  # a real file: its header is checked before the cache
    conversions = []

    def slow_conversion(source, out_dir, task):
        conversions.append(out_dir)
        time.sleep(0.5)
        (out_dir / "config.json").write_text("{}")

    monkeypatch.setattr(loading, "_convert", slow_conversion)
    results, errors = [], []

    def load():
        try:
            results.append(loading._gguf_cache(gguf, Task()))
        except Exception as exc:  # noqa: BLE001 - the test reports it
            errors.append(exc)

    threads = [threading.Thread(target=load) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == [] and len(results) == 2 and results[0] == results[1]
    assert len(conversions) == 1 and (results[0] / "config.json").is_file()
    assert [p.name for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")] == [results[0].name]


# --- finding 8: a full disk is said as such ----------------------------------------------------


def test_too_little_free_space_is_refused_before_writing(tmp_path):
    free = shutil.disk_usage(tmp_path).free
    with pytest.raises(BadInput, match=r"no space left on device.*needed about .* MB, .* MB free"):
        staging.check_free_space(tmp_path, free * 2)


def _can_mount_a_small_disk() -> bool:
    if not sys.platform.startswith("linux") or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /tmp"], capture_output=True, timeout=30
    )
    return probe.returncode == 0


DISK_FILLS_UP = """
import sys
from pathlib import Path
from int8wb.engine.errors import WorkbenchError
from int8wb.engine.process.session import Session
from int8wb.engine.task import CallbackTask, Task

source, out = sys.argv[1], Path(sys.argv[2])
session = Session()
session.load_model({"model": source, "device": "cpu"}, Task())
session.quantize({"methods": ["vectorwise"], "threshold": 6.0}, Task())

def someone_fills_the_disk(fraction, message):
    filler = out.parent / "filler"
    if not filler.exists():
        with open(filler, "wb") as handle:
            try:
                while True:
                    handle.write(bytes(1 << 16))
            except OSError:
                pass

params = {"method": "vectorwise", "out": str(out), "max_shard_size": "20KB"}
try:
    session.export(params, CallbackTask(on_progress=someone_fills_the_disk, min_interval_s=0))
except WorkbenchError as exc:
    print(type(exc).__name__, exc)
print("left:", sorted(p.name for p in out.parent.iterdir()))
"""


@pytest.mark.slow
@pytest.mark.skipif(not _can_mount_a_small_disk(), reason="cannot mount a small tmpfs in a user namespace here")
def test_a_disk_that_fills_up_while_exporting_is_said_as_such(tiny_dir, tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    script = tmp_path / "fill.py"
    script.write_text(DISK_FILLS_UP)
    command = (
        f'mount -t tmpfs -o size=4m tmpfs "{disk}" && exec "{sys.executable}" "{script}" "{tiny_dir}" "{disk}/export"'
    )
    run = subprocess.run(
        ["unshare", "-rm", "sh", "-c", command],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert "Traceback" not in run.stderr, run.stderr
    assert run.stdout.startswith("BadInput no space left on device"), run.stdout + run.stderr
    assert "needed about" in run.stdout and "MB free" in run.stdout
    assert run.stdout.strip().endswith("left: ['filler']")  # no staging folder, no half export


# --- finding 11: the umask stays as it is; a sidecar cannot point outside its folder --------------


def test_an_export_never_changes_the_process_umask(vectorwise_session, tmp_path, monkeypatch):
    calls = []
    real_umask = os.umask

    def watched_umask(mask):
        calls.append(mask)
        return real_umask(mask)

    monkeypatch.setattr(os, "umask", watched_umask)
    out = tmp_path / "export"
    vectorwise_session.export({"method": "vectorwise", "out": str(out)}, Task())
    assert calls == []
    expected = 0o666 & out.stat().st_mode  # what the umask left of rw for everyone, as for the folder
    assert {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()} == {p.name: expected for p in out.iterdir()}


@pytest.mark.parametrize("name", ["../outside.safetensors", "/etc/hostname", "sub/model.safetensors", "..", "a\\b"])
def test_a_sidecar_cannot_send_reopening_outside_its_folder(vectorwise_session, tmp_path, name):
    out = tmp_path / "export"
    vectorwise_session.export({"method": "vectorwise", "out": str(out)}, Task())
    shutil.copy(out / "model.safetensors", tmp_path / "outside.safetensors")
    sidecar = json.loads((out / export.SIDECAR_NAME).read_text())
    sidecar["files"] = {name: sidecar["files"]["model.safetensors"]}
    (out / export.SIDECAR_NAME).write_text(json.dumps(sidecar))
    with pytest.raises(ModelLoadError, match="not a file of the export's own folder"):
        Session().load_model({"model": str(out), "device": "cpu"}, Task())


def test_a_sidecar_of_the_wrong_shape_is_a_damaged_export(vectorwise_session, tmp_path):
    out = tmp_path / "export"
    vectorwise_session.export({"method": "vectorwise", "out": str(out)}, Task())
    sidecar = json.loads((out / export.SIDECAR_NAME).read_text())
    sidecar["files"] = ["model.safetensors"]
    (out / export.SIDECAR_NAME).write_text(json.dumps(sidecar))
    with pytest.raises(ModelLoadError, match="'files' must map"):
        Session().load_model({"model": str(out), "device": "cpu"}, Task())


# --- finding 6 (second round): --overwrite replaces only the files the export lists as its own ------


@pytest.fixture(scope="module")
def two_method_session(tiny_dir) -> Session:
    """vectorwise (for bitsandbytes and compressed-tensors) and q8_0 (for GGUF)."""
    session = Session()
    session.load_model({"model": str(tiny_dir), "device": "cpu"}, Task())
    session.quantize({"methods": ["vectorwise", "q8_0"], "threshold": 6.0}, Task())
    return session


FORMATS = [("vectorwise", "bitsandbytes"), ("vectorwise", "compressed-tensors"), ("q8_0", "gguf-q8_0")]


@pytest.mark.parametrize(("method", "fmt"), FORMATS)
def test_overwrite_refuses_a_folder_with_files_the_export_did_not_write(two_method_session, tmp_path, method, fmt):
    out = tmp_path / "export"
    params = {"method": method, "format": fmt, "out": str(out)}
    two_method_session.export(params, Task())
    (out / "NOTES.md").write_text("what I found")
    (out / "other-model.gguf").write_bytes(b"GGUF another model")
    before = listing(out)
    with pytest.raises(BadInput, match=r"did not write: NOTES\.md, other-model\.gguf"):
        two_method_session.export({**params, "overwrite": True}, Task())
    with pytest.raises(BadInput, match=r"did not write: NOTES\.md, other-model\.gguf"):
        export.check_target(out, overwrite=True)  # what the CLI asks before it loads the model
    assert listing(out) == before


def test_a_subfolder_the_user_added_is_named_too(two_method_session, tmp_path):
    out = tmp_path / "export"
    two_method_session.export({"method": "vectorwise", "out": str(out)}, Task())
    (out / "runs").mkdir()
    with pytest.raises(BadInput, match=r"did not write: runs"):
        export.check_target(out, overwrite=True)


def test_a_file_added_while_exporting_keeps_the_old_export(two_method_session, tmp_path, monkeypatch):
    out = tmp_path / "export"
    two_method_session.export({"method": "vectorwise", "out": str(out)}, Task())
    real_write_json = export.write_json

    def write_json_then_the_user_adds_a_file(path, value):
        real_write_json(path, value)
        if path.parent != out and not (out / "NOTES.md").exists():
            (out / "NOTES.md").write_text("what I found")

    monkeypatch.setattr(export, "write_json", write_json_then_the_user_adds_a_file)
    before = listing(out)
    with pytest.raises(BadInput, match="no longer ours to replace; nothing was replaced"):
        two_method_session.export({"method": "vectorwise", "out": str(out), "overwrite": True}, Task())
    assert listing(out) == {**before, "NOTES.md": b"what I found"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_an_export_that_does_not_list_its_files_is_not_replaced(two_method_session, tmp_path):
    out = tmp_path / "export"
    two_method_session.export({"method": "vectorwise", "out": str(out)}, Task())
    sidecar = json.loads((out / export.SIDECAR_NAME).read_text())
    del sidecar["written_files"]
    (out / export.SIDECAR_NAME).write_text(json.dumps(sidecar))
    before = listing(out)
    with pytest.raises(BadInput, match="does not list the files it wrote"):
        two_method_session.export({"method": "vectorwise", "out": str(out), "overwrite": True}, Task())
    assert listing(out) == before


@pytest.mark.parametrize(("method", "fmt"), FORMATS)
def test_overwrite_replaces_an_export_that_holds_only_its_own_files(two_method_session, tmp_path, method, fmt):
    out = tmp_path / "export"
    params = {"method": method, "format": fmt, "out": str(out)}
    first = two_method_session.export(params, Task())
    second = two_method_session.export({**params, "overwrite": True}, Task())
    assert {f["name"] for f in second["files"]} == {f["name"] for f in first["files"]}
