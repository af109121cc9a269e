"""A folder written as a whole: staged beside its target, renamed into place, never over anything else.

The rules, for every writer of a folder (an export, the cache's converted models):
- the new folder is written under a hidden name beside its target
  (`.NAME.partial-XXXXXXXXXXXX`, which nobody else uses) and renamed onto the
  target only when complete, so an interrupted write never leaves something
  that looks whole;
- the writer holds a lock on its staging folder while it works: a staging
  folder that nobody holds, and that has not changed for `STALE_AFTER_S`, is
  what a killed writer left, and the next writer for the same target removes
  it (only folders of this naming, never anything else);
- an existing target is replaced only when the caller said so and the caller's
  `replaceable(folder)` agrees, judged after the folder was moved aside where
  nobody else renames it, so a folder that appears or changes between the
  check and the replacement is never deleted;
- nothing here changes the process umask (other threads create files meanwhile):
  modes come from the staging folder, which `mkdir` made under the umask.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from int8wb.engine.errors import BadInput

STALE_AFTER_S = 60.0
PARTIAL, OLD = "partial", "old"
_SUFFIX = "[a-z0-9_]{8,16}"  # ours, and tempfile.mkdtemp's of earlier versions


def staging_name(target_name: str, role: str) -> str:
    return f".{target_name}.{role}-{secrets.token_hex(6)}"


def make_staging_dir(target: Path, role: str = PARTIAL) -> Path:
    """A new empty folder beside `target`, mode 0777 less the umask (as any new folder of the user)."""
    for _ in range(100):
        path = target.parent / staging_name(target.name, role)
        try:
            os.mkdir(path, 0o777)
            return path
        except FileExistsError:
            continue
    raise BadInput(f"cannot create a staging folder beside {target}")


def file_mode(folder: Path) -> int:
    """The mode a new file in `folder` should have: what the umask left of 0666 (read off the folder)."""
    return 0o666 & folder.stat().st_mode


@contextlib.contextmanager
def held(folder: Path) -> Iterator[None]:
    """Hold the lock that marks `folder` as being written (released when the process dies, whatever kills it)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        _lock(fd, blocking=True)
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def exclusive(lock_file: Path) -> Iterator[None]:
    """One process at a time past this point, for everything that uses `lock_file`."""
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        _lock(fd, blocking=True)
        yield
    finally:
        os.close(fd)


def _lock(fd: int, blocking: bool) -> bool:
    try:
        import fcntl
    except ImportError:  # no advisory locks on this platform: nobody is ever taken for stale
        return blocking
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    return True


def remove_stale(target: Path) -> list[Path]:
    """Remove what killed writers of `target` left beside it; returns what was removed or put back.

    A staging folder is removed; a set-aside old target is put back when the target is missing
    (the writer died between moving it aside and renaming the new one in), else removed.
    """
    # `.NAME-XXXXXXXX` is how the cache's GGUF conversions were staged before.
    pattern = re.compile(rf"\.{re.escape(target.name)}(?:\.({PARTIAL}|{OLD}))?-{_SUFFIX}")
    cleaned = []
    try:
        entries = list(target.parent.iterdir())
    except OSError:
        return cleaned
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if match is None or entry.is_symlink() or not entry.is_dir() or not _is_abandoned(entry):
            continue
        kept = entry / target.name
        if match.group(1) == OLD and kept.is_dir() and not target.exists():
            os.rename(kept, target)
        shutil.rmtree(entry, ignore_errors=True)
        cleaned.append(entry)
    return cleaned


def _is_abandoned(folder: Path) -> bool:
    """Unchanged for a while and locked by nobody."""
    try:
        if time.time() - folder.stat().st_mtime < STALE_AFTER_S:
            return False
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return False
    try:
        return _lock(fd, blocking=False)
    finally:
        os.close(fd)


def check_free_space(folder: Path, needed: int) -> None:
    """`BadInput` before anything is written when `folder`'s disk cannot take `needed` bytes."""
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise BadInput(f"{no_space_message(folder, needed, free)}; nothing was written")


def no_space_message(folder: Path, needed: int, free: int | None = None) -> str:
    free = shutil.disk_usage(folder).free if free is None else free
    return f"no space left on device for {folder}: needed about {needed / 1e6:,.1f} MB, {free / 1e6:,.1f} MB free"


def is_disk_full(exc: BaseException) -> bool:
    """ENOSPC or EDQUOT, as an OSError or as safetensors' own error (which only says so in its text)."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    text = str(exc)
    return type(exc).__name__ == "SafetensorError" and (
        "No space left on device" in text or "os error 28" in text or "Disk quota exceeded" in text
    )


def write_error(exc: BaseException, target: Path, needed: int) -> BadInput | None:
    """A write failure as a message that says what to do, or None for a failure that is not the disk's."""
    if is_disk_full(exc):
        return BadInput(f"{no_space_message(target.parent, needed)}; nothing was written, free some space")
    if not isinstance(exc, OSError):
        return None
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return BadInput(
            f"cannot write to {target.parent}: {exc.strerror or 'permission denied'} "
            "(read-only folder or disk); choose a writable folder; nothing was written"
        )
    return BadInput(f"could not write {target}: {exc}; nothing was written")


def write_folder(
    target: Path,
    needed: int,
    write: Callable[[Path], None],
    check_cancelled: Callable[[], None],
    overwrite: bool,
    replaceable: Callable[[Path], bool],
) -> None:
    """Run `write(staging)` in a staging folder beside `target`, then rename it onto `target`.

    On any failure the staging folder is removed, so nothing that looks whole is left behind.
    """
    remove_stale(target)
    check_free_space(target.parent, needed)
    try:
        staging = make_staging_dir(target)
    except OSError as exc:
        raise write_error(exc, target, needed) from exc
    try:
        with held(staging):
            write(staging)
            check_cancelled()
            replace(staging, target, overwrite, replaceable)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        error = write_error(exc, target, needed)
        if error is not None:
            raise error from exc
        raise


def replace(staging: Path, target: Path, overwrite: bool, replaceable: Callable[[Path], bool]) -> None:
    """Rename `staging` onto `target`; a non-empty target only with `overwrite` and when `replaceable`."""
    try:
        os.rename(staging, target)  # onto nothing, or onto an empty folder: atomic, nothing lost
        return
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
            raise
    if not overwrite or not target.is_dir() or target.is_symlink():
        raise BadInput(f"{target} appeared or changed while writing; it was left as it is and nothing was replaced")
    holder = make_staging_dir(target, OLD)
    with held(holder):
        old = holder / target.name
        os.rename(target, old)  # from here on, nobody else renames or swaps it
        if not replaceable(old):
            _put_back(old, target, holder)
            raise BadInput(f"{target} changed while writing and is no longer ours to replace; nothing was replaced")
        try:
            os.rename(staging, target)
        except BaseException:
            _put_back(old, target, holder)
            raise
    shutil.rmtree(holder, ignore_errors=True)


def _put_back(old: Path, target: Path, holder: Path) -> None:
    try:
        os.rename(old, target)
    except OSError as exc:
        raise BadInput(f"{target} was recreated meanwhile; the previous one is kept in {old}") from exc
    os.rmdir(holder)


def overlaps(target: Path, source: Path) -> bool:
    """Whether writing or replacing `target` would touch `source`: the same, inside it, or holding it."""
    return target == source or source in target.parents or target in source.parents
