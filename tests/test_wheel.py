"""The wheel carries everything the kernels need: built from a copy of the source, installed into a
fresh virtual environment, and compiled there from the installed files: the CUDA kernels with NVRTC
(no GPU), the fused CPU passes with the system C compiler where there is one.

Nothing is downloaded: the wheel is built with the setuptools already here (no build isolation) and
installed without its dependencies; the fresh environment reaches NVRTC and platformdirs through a
path file pointing at the site-packages that hold them, which does not expose this checkout.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["app", "engine", "kernels", "resources"]
IN_THE_FRESH_ENVIRONMENT = """
import json, sys
from int8wb.kernels import cpu_loader, cuda_loader
cubins = cuda_loader.cubins_for(90)
print(json.dumps({
    "kernels": cuda_loader.__file__,
    "prefix": sys.prefix,
    "sources": sorted(cuda_loader.cuda_sources()),
    "headers": sorted(cuda_loader.cuda_headers()),
    "cubins": [path.read_bytes()[:4].hex() for path in cubins.values()],
    "cpu_passes": cpu_loader.library() is not None or cpu_loader.unavailable_reason(),
}))
"""


def build_wheel(tmp_path: Path) -> Path:
    source = tmp_path / "source"
    for package in PACKAGES:
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    dist = tmp_path / "dist"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", dist, source], check=True)
    (wheel,) = dist.glob("int8_workbench-*.whl")
    return wheel


def test_the_package_list_names_every_folder():
    """setuptools installs only the packages pyproject.toml lists: a new folder left out would be missing."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {
        "int8wb." + ".".join(path.relative_to(ROOT).parts)
        for package in PACKAGES
        for path in [ROOT / package, *(ROOT / package).rglob("*")]
        if path.is_dir() and path.name != "__pycache__"
    }
    assert set(setuptools["packages"]) == on_disk
    assert setuptools["package-dir"] == {f"int8wb.{package}": package for package in PACKAGES}


@pytest.mark.slow
def test_the_wheel_installs_one_top_level_name(tmp_path):
    with zipfile.ZipFile(build_wheel(tmp_path)) as wheel:
        names = wheel.namelist()
    top_level = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top_level == {"int8wb"}
    assert not any(name.startswith("int8wb/__init__") for name in names)  # one namespace, as in the checkout
    assert {"int8wb/engine/cli/__init__.py", "int8wb/kernels/common.cuh", "int8wb/resources/workbench.qss"} <= set(
        names
    )


def fresh_environment(tmp_path: Path, wheel: Path) -> Path:
    """A virtual environment holding only the wheel, plus a path to where NVRTC and platformdirs live."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    python = venv / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", "--python", python]
    subprocess.run([*pip, "install", "--no-deps", "--no-index", wheel], check=True)
    (site_packages,) = venv.glob("lib/python*/site-packages")
    needed = {Path(importlib.util.find_spec(name).submodule_search_locations[0]).parent for name in ("nvidia",)}
    needed.add(Path(importlib.util.find_spec("platformdirs").origin).parent.parent)
    (site_packages / "nvrtc-and-platformdirs.pth").write_text("".join(f"{path}\n" for path in sorted(needed)))
    return python


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="the fresh environment's layout (bin/, lib/) is Linux's")
def test_the_installed_wheel_compiles_its_kernels(tmp_path):
    python = fresh_environment(tmp_path, build_wheel(tmp_path))
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    result = subprocess.run(
        [python, "-c", IN_THE_FRESH_ENVIRONMENT], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert found["kernels"].startswith(found["prefix"]), "the checkout was imported, not the installed wheel"
    assert found["sources"] == sorted(path.name for path in (ROOT / "kernels").glob("*.cu"))
    assert found["headers"] == sorted(path.name for path in (ROOT / "kernels").glob("*.cuh")) == ["common.cuh"]
    assert found["cubins"] == ["7f454c46"] * len(found["sources"])  # ELF: a cubin for sm_90 per source
    if shutil.which("cc") or shutil.which("gcc"):
        assert found["cpu_passes"] is True, found["cpu_passes"]  # cpu_int8.c is in the wheel and compiles
