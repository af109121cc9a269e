"""When a library fails to import, say which package, which version and what to do, not "could not read a file".

A dependency that breaks at import time (a new release that needs a package we lack, or a folder on `sys.path`
named like a package it imports) surfaces deep inside model loading, where the caller only knows that loading
failed. `diagnosis` walks the exception's chain for the ImportError, finds the package whose code raised it and
the module it asked for, and returns a `DependencyError` whose message names both, with their installed versions,
where the module was actually found when that is not its distribution's copy, and the fix.

Nothing heavy is imported here: the CLI and the server use it after an import has already failed.
"""

from __future__ import annotations

import importlib.util
import traceback
from importlib import metadata
from pathlib import Path

from int8wb.engine.errors import DependencyError, ModelLoadError

FIX = (
    "install the versions this workbench is tested with: in a checkout, `make clean run` (the lock in "
    "packaging/constraints.txt); in your own environment, `pip install -c packaging/constraints.txt int8-workbench` "
    "or another release of the package named above"
)


def diagnosis(exc: BaseException) -> DependencyError | None:
    """A DependencyError for the first ImportError in `exc`'s chain (itself, its cause, its context) that an import
    statement raised (Python then names the module it looked for), else None."""
    failure = next((e for e in _chain(exc) if isinstance(e, ImportError)), None)
    if failure is None or not failure.name:
        return None  # an ImportError that no import statement raised: some code's own failure (a model's own code)
    importer = _importing_package(failure)
    wanted = (failure.name or "").split(".")[0]
    parts = [f"{_described(importer)} failed to import: {_first_line(failure)}" if importer else _first_line(failure)]
    fix = FIX
    if wanted and wanted != importer:
        where, shadow = _where(wanted)
        parts.append(where)
        if shadow is not None:
            fix = f"run from another folder, or rename {shadow}"
    parts.append(f"Fix: {fix}")
    return DependencyError(". ".join(part.rstrip(".") for part in parts if part) + ".")


def load_failure(exc: BaseException, what: str) -> DependencyError | ModelLoadError:
    """What a loader raises when `what` ("could not read the GGUF file X") failed with `exc`: the diagnosis when a
    library failed to import, else a ModelLoadError that says `what` and the exception's first line."""
    return diagnosis(exc) or ModelLoadError(f"{what}: {_first_line(exc)}")


def _chain(exc: BaseException):
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _importing_package(failure: ImportError) -> str | None:
    """The top-level package of the innermost traceback frame outside this project and the standard library:
    the library whose import statement failed (transformers, not importlib)."""
    for frame in reversed(traceback.extract_tb(failure.__traceback__)):
        package = _package_of_file(frame.filename)
        if package and package != "int8wb":
            return package
    return None


def _package_of_file(filename: str) -> str | None:
    """`transformers` for .../site-packages/transformers/activations.py; None for the stdlib or our own files."""
    path = Path(filename)
    if "site-packages" not in path.parts and "dist-packages" not in path.parts:
        return None
    parts = path.parts
    index = max(i for i, part in enumerate(parts) if part in ("site-packages", "dist-packages"))
    return parts[index + 1].removesuffix(".py") if index + 1 < len(parts) else None


def _distribution(package: str) -> metadata.Distribution | None:
    names = metadata.packages_distributions().get(package, [])
    for name in names:
        try:
            return metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def _described(package: str) -> str:
    distribution = _distribution(package)
    return f"{package} {distribution.version}" if distribution else package


def _where(module: str) -> tuple[str, Path | None]:
    """Which copy of `module` Python finds, and the folder that shadows the installed distribution's, if any."""
    distribution = _distribution(module)
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    found = _location(spec)
    if distribution is None:
        if found is None:
            return f"'{module}' is not installed", None
        return f"'{module}' was found at {found}, which no installed distribution provides", None
    site = Path(str(distribution.locate_file(""))).resolve()
    installed = site / module
    label = f"{distribution.metadata['Name']} {distribution.version}"
    if found is not None and not found.resolve().is_relative_to(site):
        sentence = (
            f"'{module}' was found at {found}, not the installed {label} at {installed}: a folder of that name "
            f"earlier on sys.path (often the current directory, {Path.cwd()}) shadows it"
        )
        return sentence, found
    return f"'{module}' is {label} at {installed}", None


def _location(spec) -> Path | None:
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0])
    return Path(spec.origin) if spec.origin else None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:500]
