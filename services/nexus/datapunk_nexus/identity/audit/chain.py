"""The hash chain: how a record's hash is computed, and the walk that checks a chain and
names the first place it is broken.

A record's hash is SHA-256 — or HMAC-SHA-256 when the trail has a chain key — over its
canonical form: the compact JSON array of a version tag, every field of the record in a
fixed order (the time as integer microseconds since the epoch, UTC) and the previous
record's hash in hex. Chain heads and checkpoints carry a seal made the same way over
their own fields, with a different tag, so that no value made for one can pass for
another."""

from __future__ import annotations

import enum
import hashlib
import hmac
import json
from collections.abc import AsyncIterable
from dataclasses import dataclass
from datetime import UTC, datetime

from datapunk_shared.errors import ConfigError

from datapunk_nexus.identity.audit.events import AuditEvent, RecordedEvent

__all__ = [
    "ChainHasher",
    "ChainVerdict",
    "Checkpoint",
    "Head",
    "Problem",
    "verify_chain",
]

_RECORD_TAG = "datapunk.audit.record.v1"
_HEAD_TAG = "datapunk.audit.head.v1"
_CHECKPOINT_TAG = "datapunk.audit.checkpoint.v1"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _micros(time: datetime) -> int:
    delta = time - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


# One encoder for every hash: json.dumps with options builds a new one per call.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def _canonical(parts: list[object]) -> bytes:
    return _ENCODER.encode(parts).encode("utf-8")


class ChainHasher:
    """Computes record hashes and seals, keyed (HMAC-SHA-256) when given a key."""

    def __init__(self, key: bytes | None = None) -> None:
        if key is not None and len(key) < 16:
            raise ConfigError(
                "the audit chain key (the secret nexus.auth.audit.chain_key_secret names) "
                "must be at least 16 bytes",
                keys=["nexus.auth.audit.chain_key_secret"],
            )
        self._key = key

    @property
    def keyed(self) -> bool:
        return self._key is not None

    def _digest(self, data: bytes) -> bytes:
        if self._key is None:
            return hashlib.sha256(data).digest()
        return hmac.digest(self._key, data, "sha256")  # one call into OpenSSL

    def record_hash(self, record: RecordedEvent) -> bytes:
        """The hash ``record`` must carry, from its content and its ``prev_hash``."""
        return self.hash_of(record.event, record.sequence, record.prev_hash)

    def hash_of(self, event: AuditEvent, sequence: int, prev_hash: bytes) -> bytes:
        """The hash of ``event`` as record ``sequence`` after a record hashed
        ``prev_hash``."""
        assert event.time is not None  # stored events have one
        return self._digest(
            _canonical(
                [
                    _RECORD_TAG,
                    event.tenant,
                    sequence,
                    _micros(event.time),
                    event.principal,
                    event.principal_kind,
                    event.credential_id,
                    event.action,
                    event.method,
                    event.resource,
                    str(event.outcome),
                    event.reason,
                    event.client_address,
                    event.request_id,
                    prev_hash.hex(),
                ]
            )
        )

    def head_seal(self, tenant: str, sequence: int, hash_: bytes) -> bytes:
        return self._digest(_canonical([_HEAD_TAG, tenant, sequence, hash_.hex()]))

    def checkpoint_seal(
        self, tenant: str, sequence: int, hash_: bytes, created_at: datetime
    ) -> bytes:
        return self._digest(
            _canonical([_CHECKPOINT_TAG, tenant, sequence, hash_.hex(), _micros(created_at)])
        )

    def matches(self, expected: bytes, actual: bytes) -> bool:
        return hmac.compare_digest(expected, actual)


@dataclass(frozen=True, slots=True)
class Head:
    """The newest record of a chain as its head row says, with the row's seal."""

    tenant: str
    sequence: int
    hash: bytes
    seal: bytes


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """Retention removed a chain's records up to ``sequence``; ``hash`` is the last
    removed record's hash, which the next record links to."""

    tenant: str
    sequence: int
    hash: bytes
    created_at: datetime
    seal: bytes


class Problem(enum.Enum):
    """How a chain is broken (see ``AuditChainProblem`` in the contract)."""

    EDITED = "edited"
    INSERTED = "inserted"
    MISSING = "missing"
    OUT_OF_ORDER = "out_of_order"


@dataclass(frozen=True, slots=True)
class ChainVerdict:
    """The result of a walk: intact, or the first broken sequence number and why."""

    checked: int
    first_sequence: int
    last_sequence: int
    checkpoint_sequence: int
    broken_sequence: int = 0
    problem: Problem | None = None
    description: str = ""

    @property
    def ok(self) -> bool:
        return self.problem is None


class _Broken(Exception):
    def __init__(self, sequence: int, problem: Problem, description: str) -> None:
        super().__init__(description)
        self.sequence = sequence
        self.problem = problem
        self.description = description


class _Walk:
    """The state of a walk. Each record is judged once its successor is known (one
    record of look-ahead), which tells an edited record from an inserted or moved one."""

    def __init__(self, hasher: ChainHasher, first_sequence: int, prev_hash: bytes) -> None:
        self.hasher = hasher
        self.expected_sequence = first_sequence
        self.expected_prev = prev_hash
        self.previous: RecordedEvent | None = None
        self.checked = 0
        self.first = 0
        self.last = 0

    def judge(self, record: RecordedEvent, following: RecordedEvent | None) -> None:
        """Accept ``record`` as the next link, or raise _Broken."""
        sequence = self.expected_sequence
        if record.sequence < sequence:
            # Only possible once the primary key was dropped: a second record numbered so.
            raise _Broken(
                record.sequence,
                Problem.INSERTED,
                f"there is a second record {record.sequence}",
            )
        if record.sequence > sequence:
            raise _Broken(
                sequence,
                Problem.MISSING,
                f"record {sequence} is missing: the next record is {record.sequence}",
            )
        self.first = self.first or sequence
        self.last = sequence
        self_ok = self.hasher.matches(self.hasher.record_hash(record), record.hash)
        link_ok = self.hasher.matches(self.expected_prev, record.prev_hash)
        if self_ok and link_ok:
            self.checked += 1
            self.expected_sequence += 1
            self.expected_prev = record.hash
            self.previous = record
            return
        self.checked += 1
        if not link_ok:
            self._judge_link(record, following, self_ok)
        if following is not None and following.prev_hash == record.prev_hash:
            raise _Broken(
                sequence,
                Problem.INSERTED,
                f"record {sequence} does not match its hash and the record after it links "
                "to the record before it: it was inserted",
            )
        raise _Broken(
            sequence,
            Problem.EDITED,
            f"record {sequence} does not match its hash: it was changed after it was written",
        )

    def _judge_link(
        self, record: RecordedEvent, following: RecordedEvent | None, self_ok: bool
    ) -> None:
        sequence = record.sequence
        if following is not None and following.hash == record.prev_hash:
            raise _Broken(
                sequence,
                Problem.OUT_OF_ORDER,
                f"record {sequence} links to the record after it: records were reordered",
            )
        previous = self.previous
        if previous is not None and previous.prev_hash == record.prev_hash:
            # Two records claim the same predecessor: the first of them was put in.
            raise _Broken(
                previous.sequence,
                Problem.INSERTED,
                f"records {previous.sequence} and {sequence} both link to the record before "
                f"{previous.sequence}: record {previous.sequence} was inserted",
            )
        if not self_ok and following is not None and following.prev_hash == record.hash:
            raise _Broken(
                sequence,
                Problem.EDITED,
                f"record {sequence} does not match its hash and does not link to record "
                f"{sequence - 1}, while the record after it still vouches for it: its link or "
                "its number was changed after it was written (records before it may have "
                "been deleted and the rest renumbered)",
            )
        raise _Broken(
            sequence,
            Problem.MISSING,
            f"record {sequence} does not link to record {sequence - 1}: records before it "
            "were deleted or replaced",
        )


async def verify_chain(
    hasher: ChainHasher,
    records: AsyncIterable[RecordedEvent],
    *,
    first_sequence: int,
    prev_hash: bytes,
    checkpoint: Checkpoint | None = None,
    last_sequence: int | None = None,
    check_end: bool = False,
    head: Head | None = None,
) -> ChainVerdict:
    """Walk ``records`` (in sequence order from ``first_sequence``, the first of them
    linking to ``prev_hash``) and judge every record up to ``last_sequence`` (all when
    None); a record beyond it serves only as look-ahead. ``checkpoint``, when the walk
    starts at one, must match its seal. With ``check_end`` the walk covers the chain's
    end: ``head`` must exist (when there are records), match its seal and name the last
    record."""
    walk = _Walk(hasher, first_sequence, prev_hash)
    checkpoint_sequence = checkpoint.sequence if checkpoint is not None else 0
    try:
        if checkpoint is not None:
            _check_checkpoint(hasher, checkpoint)
        # Records past a (genuinely sealed) head were not written by the trail.
        beyond = (
            head.sequence if check_end and head is not None and _head_sealed(hasher, head) else None
        )
        held: RecordedEvent | None = None
        async for record in records:
            if held is not None:
                walk.judge(held, record)
            if (
                beyond is not None
                and record.sequence > beyond
                and record.sequence == walk.expected_sequence  # not after a gap
            ):
                raise _Broken(
                    record.sequence,
                    Problem.INSERTED,
                    f"record {record.sequence} follows the chain's head (record {beyond}): "
                    "records were added that the trail did not write",
                )
            if last_sequence is not None and record.sequence > last_sequence:
                held = None
                break
            held = record
        if held is not None:
            walk.judge(held, None)
        if check_end:
            _check_head(hasher, walk, head)
    except _Broken as broken:
        return ChainVerdict(
            checked=walk.checked,
            first_sequence=walk.first,
            last_sequence=walk.last,
            checkpoint_sequence=checkpoint_sequence,
            broken_sequence=broken.sequence,
            problem=broken.problem,
            description=broken.description,
        )
    return ChainVerdict(
        checked=walk.checked,
        first_sequence=walk.first,
        last_sequence=walk.last,
        checkpoint_sequence=checkpoint_sequence,
    )


def _check_checkpoint(hasher: ChainHasher, checkpoint: Checkpoint) -> None:
    expected = hasher.checkpoint_seal(
        checkpoint.tenant, checkpoint.sequence, checkpoint.hash, checkpoint.created_at
    )
    if not hasher.matches(expected, checkpoint.seal):
        raise _Broken(
            checkpoint.sequence,
            Problem.EDITED,
            f"the checkpoint at record {checkpoint.sequence} does not match its seal: it was "
            "changed or made up",
        )


def _head_sealed(hasher: ChainHasher, head: Head) -> bool:
    return hasher.matches(hasher.head_seal(head.tenant, head.sequence, head.hash), head.seal)


def _check_head(hasher: ChainHasher, walk: _Walk, head: Head | None) -> None:
    last = walk.expected_sequence - 1
    if head is None:
        if walk.checked:
            raise _Broken(
                last,
                Problem.EDITED,
                "the chain has records but no head: the head was deleted, so the newest "
                "records may have been cut off",
            )
        return
    if not _head_sealed(hasher, head):
        raise _Broken(
            head.sequence,
            Problem.EDITED,
            f"the chain head (record {head.sequence}) does not match its seal: it was "
            "changed, so the newest records may have been cut off",
        )
    if head.sequence > last:
        raise _Broken(
            last + 1,
            Problem.MISSING,
            f"the chain ends at record {last} but its head says {head.sequence}: the newest "
            "records were deleted",
        )
    if head.sequence < last:
        raise _Broken(
            head.sequence + 1,
            Problem.INSERTED,
            f"record {head.sequence + 1} follows the chain's head (record {head.sequence}): "
            "records were added that the trail did not write",
        )
    if not hasher.matches(head.hash, walk.expected_prev):
        raise _Broken(
            last,
            Problem.INSERTED,
            f"record {last} is not the record the chain's head names: it was replaced",
        )
