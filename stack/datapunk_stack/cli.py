"""The ``datapunk`` command: ``up``, ``up --detach``, ``down`` and ``status`` for the
local stack in ``stack.data_dir`` (``.datapunk/`` in the working directory), and
``admin-key``, which prints the bootstrap administrator's API key.

The supervisor and the probes (grpc, psycopg, redis, aiokafka, aiomqtt) are imported by
the commands that use them, so ``down`` and the waiting half of ``up --detach`` start
without loading every engine's client library."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

from datapunk_shared.config import Settings, load_settings
from datapunk_shared.errors import ConfigError

from datapunk_stack.layout import Layout, StackError
from datapunk_stack.pidfile import Lock, read_state, running_pid
from datapunk_stack.process import tail

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="datapunk", description="Run the local Datapunk stack: engines and services."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the stack (foreground unless --detach)")
    up.add_argument(
        "--detach", action="store_true", help="run in the background; return once ready"
    )
    up.add_argument(
        "--engines-only", action="store_true", help="start the engines but not the services"
    )
    sub.add_parser("down", help="stop a detached stack and wait until it has exited")
    status = sub.add_parser("status", help="probe every engine and service; exit 1 if any is down")
    status.add_argument(
        "--engines-only", action="store_true", help="do not count the services as required"
    )
    sub.add_parser(
        "admin-key",
        help="print the bootstrap administrator's API key (admin of tenant 'default'), "
        "which 'datapunk up' writes on first start",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    # Client libraries (aiokafka) log every refused connection while an engine is
    # still starting; the probe result already says what went wrong.
    logging.basicConfig(level=logging.CRITICAL)
    try:
        settings = load_settings()
        layout = Layout.from_settings(settings)
        if args.command == "up":
            code = (
                _detach(settings, layout, args.engines_only)
                if args.detach
                else _up(settings, layout, args.engines_only)
            )
        elif args.command == "down":
            code = _down(settings, layout)
        elif args.command == "admin-key":
            code = _admin_key(settings, layout)
        else:
            code = _status(settings, layout, engines_only=args.engines_only)
    except (ConfigError, StackError) as exc:
        print(f"datapunk: error: {exc}", file=sys.stderr)
        code = 2 if isinstance(exc, ConfigError) else 1
    sys.exit(code)


def _up(settings: Settings, layout: Layout, engines_only: bool) -> int:
    from datapunk_stack.supervisor import Supervisor

    lock = Lock.acquire(layout)
    if lock is None:
        return _already_running(settings, layout)
    return Supervisor(settings, layout, engines_only=engines_only).run(lock)


def _already_running(settings: Settings, layout: Layout) -> int:
    state = read_state(layout)
    print(
        f"datapunk: a stack is already running in {layout.data_dir} "
        f"(pid {running_pid(layout)}, {state.state if state else 'unknown state'})"
    )
    return _status(settings, layout, engines_only=bool(state and state.engines_only))


def _detach(settings: Settings, layout: Layout, engines_only: bool) -> int:
    """Starts ``datapunk up`` as a background supervisor in its own session, then
    follows its state file until it is ready, has failed, or has died."""
    if running_pid(layout) is not None:
        return _already_running(settings, layout)
    layout.logs.mkdir(parents=True, exist_ok=True)
    log = layout.log("supervisor")
    argv = [sys.executable, "-m", "datapunk_stack.cli", "up"]
    if engines_only:
        argv.append("--engines-only")
    with log.open("ab") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C in this terminal later must not reach it
        )
    # Worst case: every engine and service uses its whole start timeout.
    deadline = time.monotonic() + settings.stack.start_timeout * 8 + 60
    while time.monotonic() < deadline:
        state = read_state(layout)
        if state is not None and state.pid == proc.pid:
            if state.state == "ready":
                print(f"datapunk: stack running in the background (pid {proc.pid}); endpoints:")
                for label, address in state.endpoints:
                    print(f"  {label:<18} {address}")
                print(f"datapunk: logs in {layout.logs}; stop with 'datapunk down'")
                return 0
            if state.state == "failed":
                proc.wait()
                print(f"datapunk: error: {state.message}", file=sys.stderr)
                return 1
        code = proc.poll()
        if code is not None:
            # Another supervisor won the lock between our check and its start.
            if running_pid(layout) is not None:
                return _already_running(settings, layout)
            print(
                f"datapunk: error: the supervisor exited with code {code}; see {log}:\n"
                + tail(log),
                file=sys.stderr,
            )
            return 1
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    print(f"datapunk: error: the stack did not become ready; see {log}", file=sys.stderr)
    return 1


def _down(settings: Settings, layout: Layout) -> int:
    pid = running_pid(layout)
    if pid is None:
        print(f"datapunk: no stack running in {layout.data_dir}")
        return 0
    if pid <= 0:
        raise StackError(f"{layout.pid_file} is locked but holds no pid; stop the holder by hand")
    print(f"datapunk: stopping the stack (pid {pid})")
    os.kill(pid, signal.SIGTERM)
    # Each child may use its whole stop timeout, one after the other.
    if _wait_stopped(layout, settings.stack.stop_timeout * 8 + 10):
        print("datapunk: stopped")
        return 0
    # The supervisor is stuck; killing it kills its children too (PR_SET_PDEATHSIG).
    os.kill(pid, signal.SIGKILL)
    _wait_stopped(layout, None)
    print("datapunk: the supervisor did not stop in time and was killed", file=sys.stderr)
    return 1


def _wait_stopped(layout: Layout, timeout: float | None) -> bool:
    """Whether the supervisor released its lock within ``timeout`` seconds (None: wait
    as long as it takes)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while running_pid(layout) is not None:
        if deadline is not None and time.monotonic() >= deadline:
            return False
        time.sleep(0.2)
    return True


def _admin_key(settings: Settings, layout: Layout) -> int:
    from datapunk_stack.admin_key import read_admin_key

    found = read_admin_key(settings, layout)
    if found.note:
        # Off stdout, which holds only the key (for KEY=$(datapunk admin-key)).
        print(f"datapunk: {found.note}", file=sys.stderr)
    print(found.key)
    return 0


def _status(settings: Settings, layout: Layout, *, engines_only: bool) -> int:
    from datapunk_stack.status import collect, format_table

    pid = running_pid(layout)
    state = read_state(layout)
    if pid is not None and state is not None and state.pid == pid:
        print(f"supervisor: {state.state} (pid {pid}) in {layout.data_dir}")
        if state.message:
            print(f"  {state.message}")
        engines_only = engines_only or state.engines_only
    else:
        print(f"supervisor: not running in {layout.data_dir}")
    rows = asyncio.run(collect(settings, layout, engines_only=engines_only))
    print(format_table(rows))
    return 0 if all(row.ok for row in rows) else 1


if __name__ == "__main__":
    main()
