"""The shape of an API key: ``dpk_<id>_<secret><checksum>``, 66 characters.

* ``dpk_`` marks a Datapunk key, so that secret scanners can find a leaked one.
* ``<id>``: 12 characters of ``[0-9a-z]`` (about 62 random bits), public. It names the
  key's row; it is shown in lists and may appear in logs and audit records.
* ``<secret>``: 32 random bytes (256 bits) in base62, 43 characters of ``[0-9A-Za-z]``.
* ``<checksum>``: the CRC32 of everything before it, in base62, 6 characters (as in
  GitHub's token format). A mistyped, truncated or made-up key fails it and is refused
  before anything is looked up; it is an integrity check, not a secret (anyone can
  compute it), so it does not slow down a deliberate guesser: the 256-bit secret does.

``parse_api_key`` refuses anything else with UNAUTHENTICATED (``INVALID_API_KEY``) and
never raises anything but ``Unauthenticated``. Every refusal carries the same message, so
a caller cannot tell a bad checksum from an unknown key or a wrong secret."""

from __future__ import annotations

import re
import secrets
import zlib
from dataclasses import dataclass, field

from datapunk_shared.errors import Unauthenticated

__all__ = [
    "KEY_LENGTH",
    "KEY_PREFIX",
    "ParsedApiKey",
    "checksum",
    "format_api_key",
    "invalid_api_key",
    "key_id_of",
    "new_key_id",
    "new_secret",
    "parse_api_key",
    "public_prefix",
]

KEY_PREFIX = "dpk"
ID_LENGTH = 12
SECRET_BYTES = 32
SECRET_LENGTH = 43  # 62**43 > 2**256
CHECKSUM_LENGTH = 6  # 62**6 > 2**32
KEY_LENGTH = len(KEY_PREFIX) + 1 + ID_LENGTH + 1 + SECRET_LENGTH + CHECKSUM_LENGTH

_ID_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"
_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# ASCII classes spelled out: \d or \w would also match other scripts' digits and letters.
_SHAPE = re.compile(
    rf"{KEY_PREFIX}_([0-9a-z]{{{ID_LENGTH}}})_([0-9A-Za-z]{{{SECRET_LENGTH}}})"
    rf"([0-9A-Za-z]{{{CHECKSUM_LENGTH}}})"
)


@dataclass(frozen=True, slots=True)
class ParsedApiKey:
    """A well-formed key split into its id and its secret (never shown by ``repr``)."""

    key_id: str
    secret: str = field(repr=False)


def invalid_api_key() -> Unauthenticated:
    """The one refusal for a key that is malformed, unknown or has the wrong secret."""
    return Unauthenticated("the API key is not valid", reason="INVALID_API_KEY")


def _base62(number: int, width: int) -> str:
    digits = []
    for _ in range(width):
        number, digit = divmod(number, 62)
        digits.append(_BASE62[digit])
    if number:
        raise ValueError("number too large for width")
    return "".join(reversed(digits))


def checksum(body: str) -> str:
    """The 6-character checksum of ``dpk_<id>_<secret>``."""
    return _base62(zlib.crc32(body.encode("ascii")), CHECKSUM_LENGTH)


def new_key_id() -> str:
    """A fresh random key id."""
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(ID_LENGTH))


def new_secret() -> str:
    """A fresh 256-bit secret in base62."""
    return _base62(int.from_bytes(secrets.token_bytes(SECRET_BYTES)), SECRET_LENGTH)


def public_prefix(key_id: str) -> str:
    """What every key with this id starts with, safe to show: ``dpk_<id>``."""
    return f"{KEY_PREFIX}_{key_id}"


def format_api_key(key_id: str, secret: str) -> str:
    """The full key a caller presents."""
    body = f"{public_prefix(key_id)}_{secret}"
    return body + checksum(body)


def parse_api_key(presented: object) -> ParsedApiKey:
    """The id and secret of a well-formed key with a correct checksum; Unauthenticated
    (``INVALID_API_KEY``) for anything else, whatever its type or size."""
    if not isinstance(presented, str) or len(presented) != KEY_LENGTH:
        raise invalid_api_key()
    match = _SHAPE.fullmatch(presented)
    if match is None:
        raise invalid_api_key()
    key_id, secret, check = match.groups()
    if checksum(presented[:-CHECKSUM_LENGTH]) != check:
        raise invalid_api_key()
    return ParsedApiKey(key_id, secret)


def key_id_of(presented: object) -> str | None:
    """The id a well-formed key names (checksum included), without verifying it; None
    for anything else. For rate-limit buckets and audit records of refused attempts: the
    id is public, the rest of the key is never to be recorded."""
    try:
        return parse_api_key(presented).key_id
    except Unauthenticated:
        return None
