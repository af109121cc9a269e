"""The product installs under one import name, `int8wb`, beside libraries whose top-level names match our folders.

transformers 5.25 imports Hugging Face's `kernels` package; this repository has a top-level folder `kernels/`.
From the repository root (on sys.path under `python -c` and `python -m pytest`) the two must each resolve to
their own files, and a library that fails to import must be reported by name, version and fix.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from int8wb.engine.errors import DependencyError, ModelLoadError
from int8wb.engine.model import dependencies
from tests.support.tiny_models import save_tiny

ROOT = Path(__file__).resolve().parents[1]

BOTH_KERNELS = """
import json, kernels, transformers.activations
import int8wb.kernels.ops as ours
print(json.dumps({"theirs": kernels.__file__, "ours": ours.__file__}))
"""


def run_python(code: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"} | env
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=environment, capture_output=True, text=True, timeout=300
    )


def test_ours_and_hugging_faces_kernels_each_resolve_to_their_own_files_from_the_repository_root():
    result = run_python(BOTH_KERNELS, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert Path(found["ours"]) == ROOT / "kernels" / "ops.py"
    assert not Path(found["theirs"]).is_relative_to(ROOT / "kernels"), found["theirs"]
    assert "site-packages" in Path(found["theirs"]).parts


TINY_MODELS_QUANTIZE = """
import json, sys
from int8wb.engine.process.session import Session
from int8wb.engine.task import Task
from tests.support.tiny_models import save_tiny
shares = {}
for family in ("gpt2", "llama"):
    directory = save_tiny(sys.argv[1] + "/" + family, family)
    session = Session()
    session.load_model({"model": directory, "device": "cpu"}, Task())
    session.scan({"tokens": 64, "seq_len": 32, "threshold": 2.5}, Task())
    session.quantize({"methods": ["vectorwise", "llm-int8"], "threshold": 2.5}, Task())
    shares[family] = sorted(session.quantized)
print(json.dumps(shares))
"""


def test_a_tiny_gpt2_and_llama_load_and_quantize_from_the_repository_root(tmp_path):
    code = TINY_MODELS_QUANTIZE.replace("sys.argv[1]", repr(str(tmp_path)))
    result = run_python(code, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"gpt2": ["llm-int8", "vectorwise"], "llama": ["llm-int8", "vectorwise"]}


def shadowing_kernels(tmp_path: Path) -> Path:
    """A folder holding a `kernels` package that is not Hugging Face's: what our own folder was before."""
    (tmp_path / "shadow" / "kernels").mkdir(parents=True)
    (tmp_path / "shadow" / "kernels" / "__init__.py").write_text('"""Not the kernels transformers wants."""\n')
    return tmp_path / "shadow"


def test_a_shadowed_dependency_is_named_with_its_version_and_the_fix(tmp_path):
    shadow = shadowing_kernels(tmp_path)
    code = (
        "from int8wb.engine.model import dependencies\n"
        "try:\n    import transformers.activations\nexcept ImportError as exc:\n"
        "    print(dependencies.diagnosis(exc))\n"
    )
    result = run_python(code, cwd=shadow, PYTHONPATH=str(shadow))
    assert result.returncode == 0, result.stderr
    import transformers

    message = result.stdout
    assert f"transformers {transformers.__version__} failed to import" in message
    assert f"'kernels' was found at {shadow / 'kernels'}" in message and "shadows it" in message
    assert f"Fix: run from another folder, or rename {shadow / 'kernels'}" in message


def test_the_cli_reports_a_broken_dependency_without_a_traceback(tmp_path):
    model = save_tiny(tmp_path / "tiny", "llama")
    shadow = shadowing_kernels(tmp_path)
    code = "import sys; from int8wb.engine.cli import main; sys.exit(main(sys.argv[1:]))"
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"} | {"PYTHONPATH": str(shadow)}
    result = subprocess.run(
        [sys.executable, "-c", code, "eval", "--model", str(model), "--methods", "vectorwise", "--tokens", "64"],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "transformers" in result.stderr and "failed to import" in result.stderr and "kernels" in result.stderr


def test_a_failure_that_is_not_an_import_stays_a_load_error():
    try:
        raise OSError("unexpected end of file")
    except OSError as exc:
        error = dependencies.load_failure(exc, "could not read the GGUF file x.gguf")
    assert type(error) is ModelLoadError
    assert str(error) == "could not read the GGUF file x.gguf: unexpected end of file"


def test_an_import_failure_under_a_load_error_is_found_in_the_chain():
    try:
        try:
            import int8wb_no_such_module  # noqa: F401
        except ImportError as cause:
            raise ValueError("wrapped") from cause
    except ValueError as exc:
        error = dependencies.load_failure(exc, "could not load the model")
    assert isinstance(error, DependencyError) and error.kind == "dependency"
    assert "No module named 'int8wb_no_such_module'" in str(error)
    assert "'int8wb_no_such_module' is not installed" in str(error)


@pytest.mark.parametrize("entry", ["int8wb.engine", "int8wb.engine.cli"])
def test_the_engine_modules_run_from_any_folder(entry, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", entry, "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr


def test_no_script_is_named_like_an_installed_package():
    """`python bench/x.py` puts bench/ first on sys.path: a bench/kernels.py hid Hugging Face's kernels there."""
    installed = set(metadata.packages_distributions())
    scripts = [path for folder in ("bench", "docs", "packaging") for path in (ROOT / folder).glob("*.py")]
    assert scripts and not [str(path.relative_to(ROOT)) for path in scripts if path.stem in installed]
