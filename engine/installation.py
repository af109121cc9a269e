"""What this installation is: its version and where its resources lie.

Both are read without importing anything heavy (the window shows them before torch loads), and both work the
same in a source checkout, an installed wheel and a frozen bundle: in each, `int8wb.resources` sits beside
`int8wb.engine`, so the resource folder is found from this file's own place. (`importlib.resources` cannot
serve here: the top-level folders are namespace portions, see pyproject.toml, and the editable install's
namespace finder gives it no directory.)

`__version__` has one source, `version` in pyproject.toml: a source checkout
reads it there (so an edit shows at once, without reinstalling), an installed
package or a frozen bundle reads the distribution's metadata, which was made
from that file.
"""

from pathlib import Path

DISTRIBUTION = "int8-workbench"
RESOURCES = Path(__file__).resolve().parent.parent / "resources"
PRESETS = RESOURCES / "presets"
ICONS = RESOURCES / "icons"
METHOD_DECLARATIONS = RESOURCES / "methods.toml"
"""The quantization methods, one table each (read by engine.vocabulary; docs/architecture.md, "Adding a method")."""
UNKNOWN_VERSION = "0+unknown"


def _read_version() -> str:
    pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
    if pyproject.is_file():
        import tomllib

        try:
            project = tomllib.loads(pyproject.read_text()).get("project", {})
        except (OSError, tomllib.TOMLDecodeError):
            project = {}
        if project.get("name") == DISTRIBUTION and isinstance(project.get("version"), str):
            return project["version"]
    from importlib import metadata

    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return UNKNOWN_VERSION


__version__ = _read_version()
