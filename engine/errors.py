"""Errors the engine reports to its users.

Every failure a user can cause (a missing file, a corrupt checkpoint, a NaN
threshold) is raised as a `WorkbenchError` with a message that says what to
do. The CLI prints the message and exits non-zero; the server sends it as an
`error` event with `kind`. Anything else is a bug and keeps its traceback.
"""


class WorkbenchError(Exception):
    """A failure caused by input or environment, explained in its message."""

    kind = "error"


class BadInput(WorkbenchError, ValueError):
    """A parameter or file the user gave is unusable (a ValueError too, for code that validates values)."""

    kind = "bad_input"


class ModelLoadError(WorkbenchError):
    """The model could not be found, read or built."""

    kind = "model_load"


class DependencyError(WorkbenchError):
    """An installed package failed to import or cannot serve: the installation, not the input, is at fault."""

    kind = "dependency"


class Cancelled(WorkbenchError):
    """The job was cancelled on request; nothing is wrong."""

    kind = "cancelled"


def check_counts(settings, names: tuple[str, ...]) -> None:
    """BadInput unless each attribute `names` of `settings` is a whole number of at least 1 (True is no count)."""
    for name in names:
        value = getattr(settings, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise BadInput(f"{name} must be a positive integer, got {value!r}")
