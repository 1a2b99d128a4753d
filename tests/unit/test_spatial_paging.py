"""Page tokens of the spatial store: opaque, bound to their query, checked on the way in."""

from __future__ import annotations

import pytest
from datapunk_lake.spatial.paging import decode_token, encode_token, fingerprint
from datapunk_shared.errors import InvalidArgument


def test_round_trip_and_empty_token() -> None:
    query = fingerprint("nearest", "roads", "0101", 10)
    token = encode_token(query, [12.5, "f-1", 3])
    assert "=" not in token
    assert decode_token(token, query, (float, str, int)) == [12.5, "f-1", 3]
    assert decode_token("", query, (str,)) is None


@pytest.mark.parametrize(
    "token",
    ["!!!", "bm90IGpzb24", encode_token("other", ["a"]), encode_token("q", [1]), "e30"],
)
def test_foreign_or_forged_tokens_are_invalid_argument(token: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        decode_token(token, "q", (str,))
    assert caught.value.reason == "INVALID_PAGE_TOKEN"
    assert [v.field for v in caught.value.violations] == ["page_token"]


def test_fingerprint_depends_on_every_part() -> None:
    assert fingerprint("within", "a", 1.0) != fingerprint("within", "a", 1.5)
    assert fingerprint("within", "a", 1.0) == fingerprint("within", "a", 1.0)
