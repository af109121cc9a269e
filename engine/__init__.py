"""The workbench engine: model loading, scan, quantization, evaluation and export.

Importing this package is cheap on purpose: the GUI imports `engine.protocol`
and `engine.client`, and its window must not wait for torch. Heavy modules
(torch, transformers) are imported by the submodules that need them.

`__version__` has one source, `version` in pyproject.toml: a source checkout
reads it there (so an edit shows at once, without reinstalling), an installed
package or a frozen bundle reads the distribution's metadata, which was made
from that file.
"""

from pathlib import Path

DISTRIBUTION = "int8-workbench"
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
