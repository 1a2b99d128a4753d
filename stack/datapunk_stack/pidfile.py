"""The supervisor's pid/lock file and state file.

The lock is an flock on ``stack.pid``: the kernel drops it when the supervisor exits
however it dies, so a stale pid file never makes a dead stack look alive. The state
file lets ``up --detach`` and ``status`` see how far a supervisor has got.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from datapunk_stack.layout import Layout

__all__ = ["Lock", "State", "read_state", "running_pid", "write_state"]


class Lock:
    """The exclusive lock a running supervisor holds on ``stack.pid``."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    @classmethod
    def acquire(cls, layout: Layout) -> Lock | None:
        """The lock, or None when another supervisor holds it."""
        layout.data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(layout.pid_file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        return cls(fd)

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def running_pid(layout: Layout) -> int | None:
    """The pid of the supervisor running on this data directory, if any."""
    try:
        fd = os.open(layout.pid_file, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.read(fd, 32).decode().strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


@dataclass(slots=True)
class State:
    pid: int
    state: str  # starting | ready | failed | stopping | stopped
    message: str = ""
    engines_only: bool = False
    endpoints: list[tuple[str, str]] = field(default_factory=list)
    updated_at: float = 0.0


def write_state(layout: Layout, state: State) -> None:
    state.updated_at = time.time()
    tmp = layout.state_file.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(asdict(state), indent=2))
    tmp.replace(layout.state_file)  # atomic, so readers never see half a file


def read_state(layout: Layout) -> State | None:
    with contextlib.suppress(FileNotFoundError, ValueError, TypeError):
        raw: dict[str, Any] = json.loads(layout.state_file.read_text())
        raw["endpoints"] = [tuple(e) for e in raw.get("endpoints", [])]
        return State(**raw)
    return None
