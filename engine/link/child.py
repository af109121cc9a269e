"""The local engine child process: how it is started, told its key, read for its address and stopped.

`EngineClient.start_local` runs one `EngineChild` at a time. The key goes to
the child on its stdin, which stays open: when this process dies, the child
reads end-of-file and exits. Its stderr goes to a log file whose last lines
explain a crash; the file is removed when the child exits cleanly.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from int8wb.engine.link.connection import EngineError

log = logging.getLogger("engine.link.client")

_SPAWNED_PIDS: list[int] = []


def spawned_engine_pids() -> list[int]:
    """Process ids of every local engine this process has started (tests check that none survives)."""
    return list(_SPAWNED_PIDS)


def _frozen_without(python: str | None) -> bool:
    """True in a frozen bundle (PyInstaller sets `sys.frozen`) unless another interpreter was asked for."""
    return python is None and bool(getattr(sys, "frozen", False))


def engine_command(python: str | None) -> list[str]:
    """How to start the engine: `python -m int8wb.engine`, or in a frozen bundle its own executable's `engine` command.

    A frozen executable is no Python interpreter (`-m` means nothing to it); the
    bundle's entry point runs `int8wb` with its arguments, so `engine` starts
    the engine from the same bundle (packaging/launcher.py).
    """
    if _frozen_without(python):
        return [sys.executable, "engine"]
    return [python or sys.executable, "-m", "int8wb.engine"]


class EngineChild:
    """One engine process on loopback, started at construction (OSError when it cannot be)."""

    def __init__(self, session: str | None = None, python: str | None = None, allow_remote_code: bool = False) -> None:
        """`session` is the engine's `--session MODULE:CALLABLE` (default: the real engine session);
        `allow_remote_code` lets the engine run the code a model ships."""
        command = engine_command(python) + ["--key-stdin", "--parent-pid", str(os.getpid())]
        command += ["--listen", "tcp://127.0.0.1:0"]
        if session:
            command += ["--session", session]
        if allow_remote_code:
            command.append("--allow-remote-code")
        env = dict(os.environ)
        if not _frozen_without(python):
            package_root = str(Path(__file__).resolve().parent.parent)
            env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        log_fd, log_name = tempfile.mkstemp(prefix="int8wb-engine-", suffix=".log")
        self.log_path = Path(log_name)
        try:
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log_fd,
                env=env,
                close_fds=True,
                start_new_session=(os.name == "posix"),
            )
        finally:
            os.close(log_fd)
        _SPAWNED_PIDS.append(self.process.pid)

    @property
    def pid(self) -> int:
        return self.process.pid

    def send_key(self, key: bytes) -> None:
        self.process.stdin.write((json.dumps({"key": key.hex()}) + "\n").encode())
        self.process.stdin.flush()

    def read_address(self, timeout_s: float) -> str:
        """The child prints {"address", "pid"} once it listens; wait for it without blocking forever."""
        process, lines = self.process, queue.Queue()
        threading.Thread(target=lambda: lines.put(process.stdout.readline()), daemon=True).start()
        deadline, line = time.monotonic() + timeout_s, b""
        while not line and process.poll() is None:
            if time.monotonic() > deadline:
                raise EngineError("timeout", f"the engine did not start within {timeout_s:.0f} s")
            try:
                line = lines.get(timeout=0.1)
            except queue.Empty:
                pass
        try:
            return json.loads(line)["address"]
        except (ValueError, KeyError, TypeError):
            raise EngineError(
                "crashed", f"the engine exited while starting (status {process.poll()}):\n{self.log_tail()}"
            ) from None

    def finish(self, timeout_s: float) -> None:
        """Wait for the child to exit (killing it after `timeout_s`); its log goes when it exited cleanly."""
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("engine %d did not exit; killing it", self.process.pid)
            self.kill()
        self._close_pipes()
        if self.process.returncode == 0:
            self.log_path.unlink(missing_ok=True)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._close_pipes()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def _close_pipes(self) -> None:
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                try:
                    pipe.close()
                except OSError:
                    pass
