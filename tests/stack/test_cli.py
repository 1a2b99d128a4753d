"""``datapunk`` without engines: what it loads at start, and ``down`` with nothing running."""

from __future__ import annotations

import subprocess
import sys

from datapunk_shared.config import Settings
from datapunk_shared.probes import ENGINE_NAMES
from datapunk_stack.engines import all_engines
from datapunk_stack.layout import Layout

from tests.stack.conftest import StackDir

# Client libraries only ``up`` (the supervisor) and ``status`` (the probes) need.
_HEAVY = ("grpc", "psycopg", "redis", "aiokafka", "aiomqtt")


def test_the_cli_loads_no_engine_client_until_a_command_needs_one() -> None:
    code = (
        "import sys, datapunk_stack.cli; "
        f"print(','.join(m for m in {_HEAVY!r} if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "", f"loaded at import: {done.stdout.strip()}"


def test_down_with_nothing_running_says_so(stack_dir: StackDir) -> None:
    done = stack_dir.cli("down", timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"no stack running in {stack_dir.data_dir}" in done.stdout


def test_every_engine_is_probed_like_the_services_probe_it() -> None:
    settings = Settings()
    engines = all_engines(settings, Layout.from_settings(settings))
    # The stack starts the engines in the order the probes list them.
    assert [e.name for e in engines] == list(ENGINE_NAMES)
    for engine in engines:
        probe = engine.probe()
        assert probe.name == engine.name
        assert type(probe).__name__.lower().startswith(engine.name.lower())
