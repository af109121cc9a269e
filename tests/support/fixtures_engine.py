"""Fixtures for tests that start engine processes: nothing may outlive them.

tests/conftest.py registers this file as a plugin, so `engine_leak_guard`
(autouse, module-scoped) guards every test module.
"""

from __future__ import annotations

import os
import time

import pytest

from int8wb.engine.link.child import spawned_engine_pids


def process_alive(pid: int) -> bool:
    """True while `pid` runs; a zombie counts as dead (its parent may not reap it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False


def wait_dead(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not process_alive(pid):
            return True
        time.sleep(0.05)
    return not process_alive(pid)


@pytest.fixture(scope="module", autouse=True)
def engine_leak_guard():
    """Fails the module if an engine child this process started is still running after it."""
    before = set(spawned_engine_pids())
    yield
    started = set(spawned_engine_pids()) - before
    survivors = [pid for pid in started if not wait_dead(pid, 5.0)]
    for pid in survivors:
        os.kill(pid, 9)
    assert not survivors, f"engine processes survived the tests: {survivors}"
