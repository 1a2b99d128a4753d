"""``datapunk`` without engines: what it loads at start, and ``down`` with nothing running."""

from __future__ import annotations

import subprocess
import sys

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
