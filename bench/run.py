"""Run benchmarks: ``python -m bench.run [NAME ...]`` (all when no name is given).

Each benchmark prints its table and writes ``bench/results/<name>.json``; at the end a
summary lists every bar with PASS or FAIL. A bar that fails is a result, not an error:
the exit status is 0 unless a benchmark crashed (1) or a name is unknown (2)."""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any

if __package__ in (None, ""):  # run as a script: python bench/run.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Result, format_table, write_result

# name -> module; a benchmark module has NAME, DESCRIPTION and run() -> Result.
BENCHMARKS: dict[str, str] = {
    "service_overhead": "bench.service_overhead",
    "vectors": "bench.vectors",
    "timeseries": "bench.timeseries",
    "spatial": "bench.spatial",
    "edge": "bench.edge",
    "grpc_entry": "bench.grpc_entry",
    "limits": "bench.limits",
    "audit": "bench.audit",
    "api_keys": "bench.api_keys",
    "policy": "bench.policy",
    "auth": "bench.auth",
}


def _load(name: str) -> ModuleType:
    return importlib.import_module(BENCHMARKS[name])


def _run_one(name: str) -> Result | None:
    module = _load(name)
    print(f"== {name}: {module.DESCRIPTION}", flush=True)
    started = time.perf_counter()
    try:
        result: Result = module.run()
    except Exception:
        traceback.print_exc()
        print(f"== {name}: CRASHED", flush=True)
        return None
    elapsed = time.perf_counter() - started
    print()
    print(format_table(result.columns, result.rows))
    for note in result.notes:
        print(f"  note: {note}")
    path = write_result(result)
    shown = path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path
    print(f"== {name}: {elapsed:.0f}s, wrote {shown}")
    print(flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run Datapunk benchmarks.")
    parser.add_argument("names", nargs="*", metavar="NAME", help=", ".join(BENCHMARKS))
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = parser.parse_args(argv)
    if args.list:
        for name in BENCHMARKS:
            print(f"{name}: {_load(name).DESCRIPTION}")
        return 0
    unknown = [name for name in args.names if name not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
        return 2
    names = args.names or list(BENCHMARKS)
    results: dict[str, Result | None] = {name: _run_one(name) for name in names}

    rows: list[list[Any]] = []
    for name, result in results.items():
        if result is None:
            rows.append([name, "(crashed)", "", "CRASH"])
            continue
        if not result.bars:
            rows.append([name, "(no bar)", "", "-"])
        for bar in result.bars:
            rows.append([name, bar.name, bar.describe(), "PASS" if bar.passed else "FAIL"])
    print("== summary")
    print(format_table(["benchmark", "bar", "measured", "verdict"], rows))
    return 1 if any(result is None for result in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
