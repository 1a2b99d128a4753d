"""The supervisor: starts the engines then the services, waits for each with a real
round-trip, watches them, and stops everything in reverse order on SIGINT/SIGTERM.

It is deliberately synchronous: children are started from the main thread (the
thread PR_SET_PDEATHSIG is tied to), and each wait runs a probe in a short
``asyncio.run``.
"""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import FrameType

from datapunk_shared.config import Settings
from datapunk_shared.probes import Probe, run_probe

from datapunk_stack.engines import all_engines
from datapunk_stack.layout import Layout, StackError
from datapunk_stack.pidfile import Lock, State, write_state
from datapunk_stack.process import Child, tail
from datapunk_stack.services import all_services
from datapunk_stack.signing_token import nexus_environment

__all__ = ["Supervisor", "check_ports", "endpoints"]

_ATTEMPT_TIMEOUT = 5.0
_RESTART_LIMIT = 3
_RESTART_MIN_UPTIME = 30.0  # a child that dies sooner is broken, not unlucky


class _StopRequested(BaseException):
    """Raised by the signal handler wherever the main thread is. A BaseException, like
    KeyboardInterrupt, so that no ``except Exception`` on the way (``run_probe`` turns
    every Exception into a failed probe) can swallow it."""


@dataclass(slots=True)
class _Running:
    """A started child and what it belongs to, for watching and restarting."""

    label: str
    child: Child
    restarts: int = 0
    given_up: bool = False


def _say(message: str) -> None:
    print(f"datapunk: {message}", flush=True)


def endpoints(settings: Settings, layout: Layout, *, engines_only: bool) -> list[tuple[str, str]]:
    rows = [(e.label, e.address) for eng in all_engines(settings, layout) for e in eng.endpoints()]
    if not engines_only:
        rows += [row for service in all_services(settings) for row in service.endpoints()]
    return rows


def check_ports(owners: Sequence[tuple[str, str, int]]) -> None:
    """Refuses to start when two parts share a port or another program holds one.

    Binding (with SO_REUSEADDR, so a port in TIME_WAIT from our own last run counts
    as free) fails on Linux exactly when something is listening there."""
    seen: dict[tuple[str, int], str] = {}
    for owner, host, port in owners:
        other = next((o for (_, p), o in seen.items() if p == port), None)
        if other is not None:
            raise StackError(f"{owner} and {other} are both configured to use port {port}")
        seen[(host, port)] = owner
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise StackError(
                        f"{owner}: port {port} on {host} is already in use by another "
                        "program; stop that program or configure another port for "
                        f"{owner} (a stack already running elsewhere?)"
                    ) from None
                raise StackError(f"{owner}: cannot listen on {host}:{port}: {exc}") from None


class Supervisor:
    def __init__(self, settings: Settings, layout: Layout, *, engines_only: bool) -> None:
        self.settings = settings
        self.layout = layout
        self.engines_only = engines_only
        self.engines = all_engines(settings, layout)
        self.services = [] if engines_only else all_services(settings)
        self.running: list[_Running] = []
        self._stopping = False

    # --- the whole life of a stack ----------------------------------------------------

    def run(self, lock: Lock) -> int:
        """Runs the stack until a signal; returns the process exit code."""
        previous = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        state = State(pid=os.getpid(), state="starting", engines_only=self.engines_only)
        code = 0
        try:
            write_state(self.layout, state)
            self._start_all()
            state.state = "ready"
            state.endpoints = endpoints(self.settings, self.layout, engines_only=self.engines_only)
            write_state(self.layout, state)
            _say("ready:")
            for label, address in state.endpoints:
                print(f"  {label:<18} {address}", flush=True)
            self._watch(state)
        except _StopRequested:
            _say("stopping")
        except StackError as exc:
            code = 1
            state.state, state.message = "failed", str(exc)
            write_state(self.layout, state)
            print(f"datapunk: error: {exc}", file=sys.stderr, flush=True)
        finally:
            # From here on a second Ctrl-C must not interrupt the orderly stop.
            self._stopping = True
            self._stop_all()
            if state.state != "failed":
                state.state = "stopped"
            write_state(self.layout, state)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            lock.release()
        if code == 0:
            _say("stopped")
        return code

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self._stopping:
            return
        self._stopping = True
        raise _StopRequested(signal.Signals(signum).name)

    # --- start ------------------------------------------------------------------------

    def _start_all(self) -> None:
        self.layout.logs.mkdir(parents=True, exist_ok=True)
        owners = [(e.name, h, p) for e in self.engines if e.managed for (h, p) in e.ports()]
        owners += [(s.name, h, p) for s in self.services for (h, p) in s.ports()]
        check_ports(owners)
        # Prepare everything before starting anything: a broken install is reported
        # before any engine has to be stopped again.
        for engine in self.engines:
            if engine.managed:
                engine.prepare()
        # Nexus's secrets and signing token (first start: a new SoftHSM2 token).
        nexus_env = nexus_environment(self.settings, self.layout) if self.services else {}
        # The engines do not depend on each other, so they start side by side (the
        # JVMs take most of the time) and are then waited for one by one.
        children = {e.name: self._spawn(e.name, e.child()) for e in self.engines if e.managed}
        for engine in self.engines:
            if not engine.managed:
                _say(f"waiting for {engine.name} (not managed) at {engine.probe().endpoint}")
            self._wait(
                engine.name, engine.readiness_probe(), children.get(engine.name), what=engine.name
            )
        # Services are all started before any gRPC call is made in this process: gRPC
        # starts threads, and forking (for PR_SET_PDEATHSIG) is safest without them.
        started = [
            (
                service,
                self._spawn(
                    service.name,
                    service.child(self.layout, nexus_env if service.name == "nexus" else None),
                ),
            )
            for service in self.services
        ]
        for service, child in started:
            self._wait(service.name, service.probe(), child, what=f"{service.name} service")

    def _spawn(self, label: str, child: Child) -> Child:
        _say(f"starting {label} (log: {child.log})")
        child.start()
        self.running.append(_Running(label, child))
        return child

    def _wait(self, name: str, probe: Probe, child: Child | None, *, what: str) -> None:
        """Until one real round-trip succeeds, the child dies, or start_timeout passes."""
        timeout = self.settings.stack.start_timeout
        deadline = time.monotonic() + timeout
        last_error = ""
        started = time.monotonic()
        while True:
            if child is not None and (code := child.exit_code()) is not None:
                raise StackError(
                    f"{what} exited with code {code} while starting; see {child.log}"
                    + _excerpt(child)
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                where = f"; see {child.log}" if child is not None else ""
                managed = "" if child is not None else " (managed = false, so not started here)"
                raise StackError(
                    f"{what}{managed} did not answer at {probe.endpoint} within "
                    f"{timeout:g}s: {last_error}{where}"
                )
            result = asyncio.run(run_probe(probe, min(_ATTEMPT_TIMEOUT, remaining)))
            if result.reachable:
                _say(f"{name} ready after {time.monotonic() - started:.1f}s")
                return
            last_error = result.error
            time.sleep(0.25)

    # --- watch ------------------------------------------------------------------------

    def _watch(self, state: State) -> None:
        """Restarts a child that dies after having run a while, a few times at most;
        one that keeps dying is left down (``status`` shows it) rather than looping."""
        while True:
            time.sleep(1.0)
            for run in self.running:
                code = run.child.exit_code()
                if code is None or run.given_up:
                    continue
                uptime = time.monotonic() - run.child.started_at
                if run.restarts >= _RESTART_LIMIT or uptime < _RESTART_MIN_UPTIME:
                    run.given_up = True
                    message = (
                        f"{run.label} exited with code {code} and is left stopped; "
                        f"see {run.child.log}"
                    )
                    _say(message)
                    state.message = message
                    write_state(self.layout, state)
                    continue
                run.restarts += 1
                _say(f"{run.label} exited with code {code}; restarting ({run.restarts})")
                run.child.start()

    # --- stop -------------------------------------------------------------------------

    def _stop_all(self) -> None:
        timeout = self.settings.stack.stop_timeout
        for run in reversed(self.running):
            if run.child.running():
                _say(f"stopping {run.label}")
            run.child.stop(timeout)
        self.running.clear()


def _excerpt(child: Child) -> str:
    text = tail(child.log)
    return ("\n  | " + text.replace("\n", "\n  | ")) if text else ""
