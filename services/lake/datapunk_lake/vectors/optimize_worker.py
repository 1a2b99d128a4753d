"""``python -m datapunk_lake.vectors.optimize_worker SHARD_DIR``: open a copy of a shard,
build its HNSW index and merge its segments, close it, exit 0.

qdrant-edge holds the GIL for the whole of ``EdgeShard.optimize()`` (tens of seconds
for 100k vectors), so the Lake runs it here, in a child process, on a copy of the shard,
and keeps serving meanwhile."""

from __future__ import annotations

import sys

import qdrant_edge as qe


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m datapunk_lake.vectors.optimize_worker SHARD_DIR", file=sys.stderr)
        return 2
    shard = qe.EdgeShard.load(argv[0])
    try:
        shard.optimize()
        shard.flush()
    finally:
        shard.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
