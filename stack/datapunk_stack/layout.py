"""Where the stack keeps things: one data directory holding every engine's data,
every log, the supervisor's pid/lock file and its state file."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from datapunk_shared.config import Settings

__all__ = ["SOURCE_ROOT", "Layout", "StackError", "unprivileged_data_dir"]

SOURCE_ROOT = Path(__file__).resolve().parents[2]
"""The source checkout this package runs from (stack/datapunk_stack/ is two levels down)."""


def unprivileged_data_dir(root: Path = SOURCE_ROOT) -> Path:
    """The data directory ``scripts/test.sh`` gives the stack of the checkout ``root``
    when it runs as root and the ``postgres`` user cannot enter ``root`` (a checkout
    under ``/root``): ``/var/tmp/datapunk-<first 12 hex digits of sha256(root)>``."""
    digest = hashlib.sha256(str(root).encode()).hexdigest()[:12]
    return Path("/var/tmp") / f"datapunk-{digest}"


class StackError(Exception):
    """The stack cannot start or stop; the message says which part and what to do."""


@dataclass(frozen=True, slots=True)
class Layout:
    data_dir: Path
    engines_lib: Path
    java: Path

    @classmethod
    def from_settings(cls, settings: Settings) -> Layout:
        stack = settings.stack
        lib = stack.engines_lib or SOURCE_ROOT / "build" / "engines" / "lib"
        return cls(
            # Absolute so children, which run in their own directories, see the same paths.
            data_dir=stack.data_dir.expanduser().resolve(),
            engines_lib=lib.expanduser().resolve(),
            java=stack.java_home / "bin" / "java",
        )

    @property
    def logs(self) -> Path:
        return self.data_dir / "logs"

    @property
    def pid_file(self) -> Path:
        """Holds the supervisor's pid; the supervisor keeps an flock on it while alive."""
        return self.data_dir / "stack.pid"

    @property
    def state_file(self) -> Path:
        """JSON the supervisor rewrites as it goes: starting, ready, failed, stopping."""
        return self.data_dir / "stack.json"

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def engine_dir(self, name: str) -> Path:
        return self.data_dir / name
