"""Child processes of the supervisor: started with their output in a log file, tied
to the supervisor's life, and stopped as a whole process group."""

from __future__ import annotations

import contextlib
import ctypes
import os
import pwd
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Child", "RunAs", "run_once", "tail"]

_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True, slots=True)
class RunAs:
    """A user to run a child as (PostgreSQL refuses to run as root)."""

    name: str

    @property
    def uid(self) -> int:
        return pwd.getpwnam(self.name).pw_uid

    @property
    def gid(self) -> int:
        return pwd.getpwnam(self.name).pw_gid

    def chown(self, *paths: Path) -> None:
        for path in paths:
            os.chown(path, self.uid, self.gid)


def _die_with_parent() -> None:
    """Runs in the child between fork and exec. If the supervisor dies, even by
    SIGKILL, the kernel sends this child SIGKILL, so no engine outlives it. It runs
    after Popen has switched user, which would otherwise clear the setting."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _ids(run_as: RunAs | None) -> tuple[int | None, int | None, list[int] | None]:
    """(user, group, extra_groups) for Popen. Popen switches user itself, with no
    intermediate runuser/su process that would sit between the supervisor and the
    engine and make PR_SET_PDEATHSIG kill only that intermediate."""
    if run_as is None or os.geteuid() != 0:
        return None, None, None
    return run_as.uid, run_as.gid, []


def run_once(
    argv: Sequence[str],
    *,
    log: Path,
    cwd: Path,
    run_as: RunAs | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 120.0,
) -> int:
    """Runs a one-time command (initdb, a storage format) to completion, its output
    appended to ``log``; returns its exit code."""
    user, group, extra_groups = _ids(run_as)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        out.write(f"\n--- {time.strftime('%F %T')} $ {' '.join(argv)}\n".encode())
        out.flush()
        done = subprocess.run(
            list(argv),
            cwd=cwd,
            env=dict(env) if env is not None else None,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=timeout,
            preexec_fn=_die_with_parent,
            check=False,
            user=user,
            group=group,
            extra_groups=extra_groups,
        )
    return done.returncode


@dataclass(slots=True)
class Child:
    """One long-running child process.

    It gets its own session (process group) so that a Ctrl-C at the terminal reaches
    only the supervisor, which then stops the children in order; stopping signals the
    whole group so helper processes an engine forks go too."""

    name: str
    argv: list[str]
    log: Path
    cwd: Path
    stop_signal: signal.Signals = signal.SIGTERM
    run_as: RunAs | None = None
    env: dict[str, str] | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)
    started_at: float = field(default=0.0, init=False)

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        user, group, extra_groups = _ids(self.run_as)
        with self.log.open("ab") as out:
            out.write(f"\n--- {time.strftime('%F %T')} $ {' '.join(self.argv)}\n".encode())
            out.flush()
            self.proc = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
                user=user,
                group=group,
                extra_groups=extra_groups,
            )
        self.started_at = time.monotonic()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def exit_code(self) -> int | None:
        """None while running (or never started), else the exit code."""
        return None if self.proc is None else self.proc.poll()

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float) -> None:
        """Sends the engine's own stop signal (PostgreSQL wants SIGINT for a fast
        shutdown), waits up to ``timeout`` seconds, then kills the group."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self._signal_group(self.stop_signal)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.proc.wait()
        # Helpers left in the group (there should be none) go with their leader.
        self._signal_group(signal.SIGKILL)

    def _signal_group(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)


def tail(path: Path, lines: int = 8) -> str:
    """The last lines of a log file, for error messages."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 8192))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
