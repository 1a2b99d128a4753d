"""What every benchmark shares: percentiles, bars, a plain-text table, the JSON result
file and a few process helpers (free ports, starting and stopping servers).

A benchmark module exposes ``NAME`` (its result file name), ``DESCRIPTION`` and
``run() -> Result``; ``bench/run.py`` lists the modules it runs."""

from __future__ import annotations

import json
import math
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "BENCH_DIR",
    "REPO_ROOT",
    "RESULTS_DIR",
    "Bar",
    "Result",
    "format_table",
    "free_port",
    "machine",
    "percentile",
    "process_cpu_seconds",
    "stop_process",
    "summarize_latencies",
    "wait_until",
    "write_result",
]

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``values``, linear between closest ranks."""
    if not values:
        return math.nan
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize_latencies(seconds: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99/mean of per-call latencies, in microseconds."""
    if not seconds:
        return {"p50_us": math.nan, "p90_us": math.nan, "p99_us": math.nan, "mean_us": math.nan}
    ordered = sorted(seconds)
    return {
        "p50_us": percentile(ordered, 50) * 1e6,
        "p90_us": percentile(ordered, 90) * 1e6,
        "p99_us": percentile(ordered, 99) * 1e6,
        "mean_us": sum(ordered) / len(ordered) * 1e6,
    }


@dataclass(frozen=True)
class Bar:
    """One pass/fail criterion: ``value`` compared with ``limit``."""

    name: str
    value: float
    limit: float
    direction: Literal[">=", "<="]
    unit: str = ""

    @property
    def passed(self) -> bool:
        if math.isnan(self.value):
            return False
        return self.value >= self.limit if self.direction == ">=" else self.value <= self.limit

    def describe(self) -> str:
        return f"{_num(self.value)}{self.unit} {self.direction} {_num(self.limit)}{self.unit}"


@dataclass
class Result:
    """What one benchmark run produced: rows for its table, its bars, free-form details."""

    name: str
    description: str
    columns: list[str]
    rows: list[list[Any]]
    bars: list[Bar] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(bar.passed for bar in self.bars)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": machine(),
            "passed": self.passed,
            "bars": [{**asdict(bar), "passed": bar.passed} for bar in self.bars],
            "table": {"columns": self.columns, "rows": self.rows},
            "details": self.details,
            "notes": self.notes,
        }


def machine() -> dict[str, Any]:
    """Enough about the machine to read a result file later."""
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average": list(os.getloadavg()),
    }


def _num(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"
    return str(value)


def format_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table, numbers right-aligned."""
    cells = [[_num(value) for value in row] for row in rows]
    widths = [len(column) for column in columns]
    for row in cells:
        for index, cell in enumerate(row):
            widths[index] = max(widths[index], len(cell))

    def line(values: Sequence[str], numeric: Sequence[bool]) -> str:
        return "  ".join(
            value.rjust(width) if is_number else value.ljust(width)
            for value, width, is_number in zip(values, widths, numeric, strict=True)
        ).rstrip()

    numeric_columns = [
        all(isinstance(row[index], int | float) for row in rows) if rows else False
        for index in range(len(columns))
    ]
    out = [line(list(columns), numeric_columns), line(["-" * w for w in widths], numeric_columns)]
    for row, raw in zip(cells, rows, strict=True):
        out.append(line(row, [isinstance(value, int | float) for value in raw]))
    return "\n".join(out)


def write_result(result: Result, directory: Path = RESULTS_DIR) -> Path:
    """Write ``<directory>/<name>.json`` and return its path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{result.name}.json"
    path.write_text(json.dumps(result.to_json(), indent=2, sort_keys=False) + "\n")
    return path


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` and all its threads so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def wait_until(check: Callable[[], bool], *, timeout: float, what: str) -> None:
    """Poll ``check`` until it is true; raise TimeoutError naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise TimeoutError(f"{what} was not ready within {timeout:.0f}s")


def stop_process(process: subprocess.Popen[Any], *, grace: float = 10.0) -> int | None:
    """SIGTERM ``process`` (this process's child), then SIGKILL it after ``grace``."""
    if process.poll() is not None:
        return process.returncode
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        print(f"bench: pid {process.pid} ignored SIGTERM; killing it", file=sys.stderr)
        process.kill()
        return process.wait(timeout=grace)
