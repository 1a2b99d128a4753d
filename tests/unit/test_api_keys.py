"""API keys without engines: the key format and its checksum, the keyed hash, the error
mapping, the REST routes of the contract, and Hypothesis fuzzing of the parser (it only
ever returns a parsed key or raises Unauthenticated INVALID_API_KEY)."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import grpc
import pytest
from datapunk_nexus.edge.routes import default_descriptor_set, load_routes
from datapunk_nexus.identity.api_keys import ApiKey, IssuedApiKey, KeyState, SecretHasher
from datapunk_nexus.identity.api_keys.key_format import (
    _BASE62,
    _ID_ALPHABET,
    KEY_LENGTH,
    ParsedApiKey,
    checksum,
    format_api_key,
    key_id_of,
    new_key_id,
    new_secret,
    parse_api_key,
)
from datapunk_shared.errors import ConfigError, Unauthenticated
from datapunk_shared.rpc.status_codes import status_from_error
from google.rpc import error_details_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

PEPPER = b"p" * 32


def _fresh_key() -> tuple[str, str, str]:
    key_id, secret = new_key_id(), new_secret()
    return key_id, secret, format_api_key(key_id, secret)


def _refused(presented: object) -> Unauthenticated:
    with pytest.raises(Unauthenticated) as caught:
        parse_api_key(presented)
    return caught.value


# -- the format ------------------------------------------------------------------------


def test_a_new_key_has_the_documented_shape_and_parses_back() -> None:
    key_id, secret, key = _fresh_key()
    assert len(key) == KEY_LENGTH == 66
    assert re.fullmatch(r"dpk_[0-9a-z]{12}_[0-9A-Za-z]{49}", key)
    assert key.startswith(f"dpk_{key_id}_{secret}")
    assert parse_api_key(key) == ParsedApiKey(key_id, secret)


def test_ids_and_secrets_are_random() -> None:
    keys = {_fresh_key()[2] for _ in range(200)}
    assert len(keys) == 200
    assert len({parse_api_key(k).key_id for k in keys}) == 200


def test_a_secret_carries_256_bits() -> None:
    # The largest 43-digit base62 number is above 2**256: every 32-byte value fits.
    assert 62**43 > 2**256 > 62**42
    assert all(len(new_secret()) == 43 for _ in range(100))


def test_every_single_character_typo_is_caught_by_the_checksum() -> None:
    _, _, key = _fresh_key()
    alphabet = set(_BASE62) | set(_ID_ALPHABET)
    for position in range(4, KEY_LENGTH):
        if key[position] == "_":
            continue
        for other in sorted(alphabet - {key[position]})[:6]:
            typo = key[:position] + other + key[position + 1 :]
            _refused(typo)


def test_swapped_neighbours_are_caught_by_the_checksum() -> None:
    _, _, key = _fresh_key()
    for position in range(4, KEY_LENGTH - 1):
        a, b = key[position], key[position + 1]
        if a == b or "_" in (a, b):
            continue
        _refused(key[:position] + b + a + key[position + 2 :])


@pytest.mark.parametrize(
    "presented",
    [
        "",
        "dpk_",
        "not a key",
        None,
        b"dpk_bytes",
        12345,
        "x" * 10_000_000,  # refused by its length, without scanning it
    ],
)
def test_anything_else_is_refused(presented: object) -> None:
    error = _refused(presented)
    assert error.reason == "INVALID_API_KEY"


def test_near_misses_are_refused() -> None:
    key_id, secret, key = _fresh_key()
    body = f"dpk_{key_id}_{secret}"
    near_misses = [
        key[:-1],  # truncated
        key + "A",  # too long
        " " + key[1:],
        key.upper(),  # the id is lower case
        "dpx" + key[3:],  # another prefix (same length)
        body.replace("dpk_", "DPK_") + checksum(body.replace("dpk_", "DPK_")),
        # Another script's digits: Python's \d would take them, the parser does not.
        "dpk_" + "\u0661" * 12 + "_" + secret + checksum(body)[:6],
        f"dpk-{key_id}-{secret}" + checksum(f"dpk-{key_id}-{secret}"),
    ]
    for presented in near_misses:
        assert len(presented) != KEY_LENGTH or presented != key
        _refused(presented)


def test_the_id_of_a_well_formed_key_is_known_without_verifying_it() -> None:
    key_id, _, key = _fresh_key()
    assert key_id_of(key) == key_id
    assert key_id_of(key[:-1]) is None
    assert key_id_of(None) is None


def test_every_refusal_says_the_same_thing_and_nothing_about_the_key() -> None:
    _, _, key = _fresh_key()
    errors = [_refused(p) for p in ("", key[:-1], key[:-1] + ("A" if key[-1] != "A" else "B"))]
    assert {(e.message, e.reason, tuple(e.metadata.items())) for e in errors} == {
        ("the API key is not valid", "INVALID_API_KEY", ())
    }


def test_secrets_stay_out_of_reprs() -> None:
    key_id, secret, key = _fresh_key()
    assert secret not in repr(parse_api_key(key))
    api_key = ApiKey(
        id=key_id,
        tenant="t",
        name="n",
        roles=(),
        scopes=(),
        created_by="user:a",
        create_time=datetime.now(UTC),
    )
    assert key not in repr(IssuedApiKey(api_key, key))
    assert "pppp" not in repr(SecretHasher(PEPPER))


def test_key_states() -> None:
    now = datetime(2030, 1, 1, tzinfo=UTC)
    base = ApiKey("abcdefghijkl", "t", "n", (), (), "user:a", now)
    assert base.state(now) is KeyState.ACTIVE
    assert base.prefix == "dpk_abcdefghijkl"
    expired = ApiKey("abcdefghijkl", "t", "n", (), (), "user:a", now, expire_time=now)
    assert expired.state(now) is KeyState.EXPIRED
    revoked = ApiKey(
        "abcdefghijkl", "t", "n", (), (), "user:a", now, expire_time=now, revoke_time=now
    )
    assert revoked.state(now) is KeyState.REVOKED


# -- the keyed hash --------------------------------------------------------------------


def test_the_hash_is_keyed_by_the_pepper_and_bound_to_the_key_id() -> None:
    key_id, secret, _ = _fresh_key()
    hasher = SecretHasher(PEPPER)
    digest = hasher.digest(key_id, secret)
    assert len(digest) == 32
    assert hasher.digest(key_id, secret) == digest
    assert SecretHasher(b"q" * 32).digest(key_id, secret) != digest
    assert hasher.digest(new_key_id(), secret) != digest
    assert hasher.digest(key_id, new_secret()) != digest
    assert SecretHasher.same(digest, bytes(digest))
    assert not SecretHasher.same(digest, bytes(32))


@pytest.mark.parametrize("pepper", [b"", b"short", b"x" * 31])
def test_a_short_pepper_is_refused(pepper: bytes) -> None:
    with pytest.raises(ConfigError) as caught:
        SecretHasher(pepper)
    assert caught.value.keys == ["nexus.auth.api_keys.pepper_secret"]


# -- error mapping ---------------------------------------------------------------------


@pytest.mark.parametrize("presented", ["", "dpk_x", "Bearer abc"])
def test_a_refused_key_maps_to_unauthenticated_with_error_info(presented: str) -> None:
    code, status = status_from_error(_refused(presented))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    info = error_details_pb2.ErrorInfo()
    assert any(detail.Unpack(info) for detail in status.details)
    assert info.reason == "INVALID_API_KEY"
    assert dict(info.metadata) == {}
    assert presented not in status.message or presented == ""


# -- the contract's REST routes --------------------------------------------------------


def test_the_rest_routes_of_api_key_service() -> None:
    routes = load_routes(default_descriptor_set())
    mine = {
        (r.http_method, r.template.text, r.grpc_method.rsplit("/", 1)[1])
        for r in routes.routes
        if r.service == "ApiKeyService"
    }
    assert mine == {
        ("POST", "/v1/nexus/api-keys", "CreateApiKey"),
        ("GET", "/v1/nexus/api-keys/{id}", "GetApiKey"),
        ("GET", "/v1/nexus/api-keys", "ListApiKeys"),
        ("POST", "/v1/nexus/api-keys/{id}:revoke", "RevokeApiKey"),
        ("POST", "/v1/nexus/api-keys/{id}:rotate", "RotateApiKey"),
    }
    matched = [
        (r.method_name, found)
        for r in routes.routes
        if r.service == "ApiKeyService" and r.http_method == "POST"
        for found in [r.template.match("/v1/nexus/api-keys/abcdefghijkl:revoke")]
        if found is not None
    ]
    assert matched == [("RevokeApiKey", {"id": "abcdefghijkl"})]


# -- fuzzing ---------------------------------------------------------------------------


def _parses_or_is_refused(presented: object) -> ParsedApiKey | None:
    try:
        return parse_api_key(presented)
    except Unauthenticated as exc:
        refusal = exc
    assert (refusal.reason, refusal.message) == ("INVALID_API_KEY", "the API key is not valid")
    return None


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.text(), st.binary(), st.none(), st.integers(), st.floats()))
def test_fuzz_arbitrary_input_is_only_ever_refused(presented: object) -> None:
    assert _parses_or_is_refused(presented) is None
    assert key_id_of(presented) is None


_KEY_SHAPED = st.from_regex(r"\Adpk_[0-9a-z]{12}_[0-9A-Za-z]{49}\Z")


@settings(max_examples=500, deadline=None)
@given(_KEY_SHAPED)
def test_fuzz_key_shaped_strings_pass_only_with_their_checksum(presented: str) -> None:
    parsed = _parses_or_is_refused(presented)
    body = presented[:-6]
    assert (parsed is not None) == (checksum(body) == presented[-6:])
    fixed = body + checksum(body)
    assert parse_api_key(fixed).key_id == fixed[4:16]


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_fuzz_edited_keys_are_refused(data: st.DataObject) -> None:
    _, _, key = _fresh_key()
    position = data.draw(st.integers(0, KEY_LENGTH - 1))
    edit = data.draw(st.sampled_from(["replace", "delete", "insert"]))
    char = data.draw(st.characters(codec="utf-8"))
    if edit == "replace":
        if char == key[position]:
            return
        edited = key[:position] + char + key[position + 1 :]
    elif edit == "delete":
        edited = key[:position] + key[position + 1 :]
    else:
        edited = key[:position] + char + key[position:]
    assert _parses_or_is_refused(edited) is None
