"""Sessions for engines started by tests (`int8wb engine --session tests.support.engine_sessions:SleepySession`).

They stand where `engine.process.session.Session` stands when a test is about the process and the wire,
not about a model: their jobs take exactly as long as asked and load nothing.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np


class SleepySession:
    """Every job sleeps `params["seconds"]` (default 0) in small steps, reporting progress, then answers."""

    def __init__(self, allow_remote_code: bool = False) -> None:
        self.allow_remote_code = allow_remote_code

    def handle(self, request_type: str, params: dict[str, Any], task) -> dict[str, Any]:
        seconds = float(params.get("seconds", 0.0))
        steps = max(1, int(seconds / 0.05))
        for step in range(steps):
            task.check_cancelled()
            time.sleep(seconds / steps)
            task.progress((step + 1) / steps, f"step {step + 1} of {steps}")
        return {"slept": seconds, "values": np.arange(4, dtype=np.int64), "remote_code": self.allow_remote_code}
