"""`int8wb install-desktop-entry [--uninstall]`: put the workbench in the current user's application menu.

Writes, under the user's XDG data folder ($XDG_DATA_HOME, else ~/.local/share):

    applications/<APP_ID>.desktop                 the menu entry; Exec is this installation's own command
    icons/hicolor/scalable/apps/<APP_ID>.svg      the icon, and its PNG renderings in
    icons/hicolor/<N>x<N>/apps/<APP_ID>.png       16x16 ... 512x512

Exec is absolute, so the entry starts this very installation: the bundle's
executable when run from the bundle (it opens the window without arguments),
else the `int8wb` script beside this Python (`int8wb gui`). `--uninstall`
removes exactly these files. Nothing outside the user's data folder is touched.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from int8wb.engine import installation
from int8wb.engine.cli import _common
from int8wb.engine.errors import BadInput

APP_ID = "org.int8workbench.Int8Workbench"
ICON_DIR = installation.ICONS
ICON_SVG = "int8-workbench.svg"
ICON_SIZES = (16, 24, 32, 48, 64, 128, 256, 512)
EXEC_RESERVED = set(" \t\n\"'\\><~|&;$*?#()`")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = _common.documented_command(
        subparsers,
        "install-desktop-entry",
        help="add the workbench to your desktop's application menu (or remove it with --uninstall)",
        doc=__doc__,
    )
    parser.add_argument("--uninstall", action="store_true", help="remove the entry and icons installed before")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    data_home = xdg_data_home()
    paths = uninstall(data_home) if args.uninstall else install(data_home, launch_command())
    verb = "removed" if args.uninstall else "installed"
    if not paths:
        print("nothing to remove: no desktop entry of the workbench is installed for this user")
    for path in paths:
        print(f"{verb} {path}")
    return 0


def xdg_data_home() -> Path:
    """$XDG_DATA_HOME when set to an absolute path (the XDG spec ignores relative ones), else ~/.local/share."""
    value = os.environ.get("XDG_DATA_HOME", "")
    if value and os.path.isabs(value):
        return Path(value)
    return Path.home() / ".local" / "share"


def launch_command() -> list[str]:
    """The command that opens the window of this installation, as absolute as it can be made."""
    if getattr(sys, "frozen", False):
        return [str(Path(sys.executable).resolve())]
    script = Path(sys.executable).parent / "int8wb"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script.absolute()), "gui"]
    found = shutil.which("int8wb")
    if found:
        return [str(Path(found).absolute()), "gui"]
    return [str(Path(sys.executable).absolute()), "-m", "int8wb.engine.cli", "gui"]


def entry_text(command: list[str]) -> str:
    """The .desktop file for `command` (packaging/*.desktop is this text for `int8wb gui`)."""
    return "\n".join(
        [
            "[Desktop Entry]",
            "Type=Application",
            "Name=Int8 Workbench",
            "GenericName=LLM INT8 Quantization Workbench",
            "Comment=See, pick and quantize the activation outliers of a language model",
            f"Exec={exec_value(command)}",
            f"Icon={APP_ID}",
            "Terminal=false",
            "StartupNotify=true",
            "Categories=Science;ArtificialIntelligence;DataVisualization;",
            "Keywords=LLM;quantization;INT8;outliers;transformers;",
            "",
        ]
    )


def exec_value(command: list[str]) -> str:
    """`command` as a desktop entry Exec value: reserved characters quoted, `%` doubled (Desktop Entry spec)."""
    if not command:
        raise BadInput("the desktop entry needs a command to run")
    parts = []
    for argument in command:
        if "\n" in argument or "\r" in argument:
            raise BadInput(f"a desktop entry cannot run {argument!r}: it contains a line break")
        argument = argument.replace("%", "%%")
        if EXEC_RESERVED & set(argument) or not argument:
            for char in ("\\", '"', "`", "$"):
                argument = argument.replace(char, "\\" + char)
            argument = f'"{argument}"'
        parts.append(argument.replace("\\", "\\\\"))  # the string escape rule, applied on top
    return " ".join(parts)


def installed_paths(data_home: Path) -> list[Path]:
    """Every file `install` writes under `data_home`, the entry first."""
    icons = data_home / "icons" / "hicolor"
    return [
        data_home / "applications" / f"{APP_ID}.desktop",
        icons / "scalable" / "apps" / f"{APP_ID}.svg",
        *[icons / f"{size}x{size}" / "apps" / f"{APP_ID}.png" for size in ICON_SIZES],
    ]


def icon_sources() -> list[Path]:
    """The icon files of this installation, in the order of `installed_paths(...)[1:]`."""
    sources = [ICON_DIR / ICON_SVG, *[ICON_DIR / f"int8-workbench-{size}.png" for size in ICON_SIZES]]
    missing = [str(path) for path in sources if not path.is_file()]
    if missing:
        raise BadInput(f"this installation lacks its icons ({', '.join(missing)}); reinstall the workbench")
    return sources


def install(data_home: Path, command: list[str]) -> list[Path]:
    """Write the entry and the icons under `data_home` (replacing older ones); returns the files written."""
    entry, *icon_targets = installed_paths(data_home)
    sources = icon_sources()
    try:
        for source, target in zip(sources, icon_targets):
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
        entry.parent.mkdir(parents=True, exist_ok=True)
        temporary = entry.with_name(f".{entry.name}.tmp")
        temporary.write_text(entry_text(command), encoding="utf-8")
        temporary.chmod(0o644)
        os.replace(temporary, entry)
    except OSError as exc:
        raise BadInput(f"cannot install the desktop entry under {data_home}: {exc}") from None
    return [entry, *icon_targets]


def uninstall(data_home: Path) -> list[Path]:
    """Remove what `install` wrote under `data_home`; returns the files that were there."""
    removed = []
    for path in installed_paths(data_home):
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise BadInput(f"cannot remove {path}: {exc}") from None
        removed.append(path)
    return removed
