"""Keys on a PKCS#11 token (SoftHSM2 in development and tests, a hardware security
module in production): P-256 key pairs are generated on the token, their private halves
are sensitive and never extractable, and every signature is made by the token.

PKCS#11 logs in per application, not per session, and closing a logged-in session logs
the whole process out, so every user of one token in this process shares one session
(reference-counted) and takes turns on it under a lock."""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pkcs11
from datapunk_shared.errors import FailedPrecondition, NotFound, Unavailable
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11.exceptions import (
    NoSuchKey,
    NoSuchToken,
    PinIncorrect,
    PinInvalid,
    PinLenRange,
    PinLocked,
    PKCS11Error,
)
from pkcs11.types import SignMixin
from pkcs11.util.ec import encode_named_curve_parameters

from datapunk_nexus.identity.signing._jwk import ALG, COORDINATE_BYTES, p256_public_jwk

__all__ = ["Pkcs11Signer", "Pkcs11Token"]

_KEY_ID_BYTES = 16
_SIGNATURE_BYTES = 2 * COORDINATE_BYTES


@dataclass(eq=False)
class _SharedSession:
    """The one logged-in session of this process on one token."""

    session: pkcs11.Session
    mechanism: Mechanism
    pin_digest: bytes
    users: int = 0
    lock: threading.RLock = field(default_factory=threading.RLock)


_sessions: dict[tuple[str, str], _SharedSession] = {}
_sessions_lock = threading.Lock()


class Pkcs11Signer:
    """An ES256 signer whose private key stays on a PKCS#11 token; ``sign`` asks the
    token to sign (CKM_ECDSA_SHA256, or CKM_ECDSA over a SHA-256 digest where the token
    has only that) and returns the JWS form r || s."""

    alg: str = ALG

    def __init__(
        self,
        shared: _SharedSession,
        private_key: SignMixin,
        key_id: bytes,
        token_label: str,
        public_jwk: dict[str, str],
    ) -> None:
        self._shared = shared
        self._key = private_key
        self.key_id = key_id
        self.token_label = token_label
        self._jwk = public_jwk
        self.kid: str = public_jwk["kid"]

    def sign(self, signing_input: bytes) -> bytes:
        mechanism = self._shared.mechanism
        data = signing_input
        if mechanism == Mechanism.ECDSA:
            data = hashlib.sha256(signing_input).digest()
        try:
            with self._shared.lock:
                signature = bytes(self._key.sign(data, mechanism=mechanism))
        except PKCS11Error as exc:
            raise Unavailable(
                f"the PKCS#11 token {self.token_label!r} could not sign with key "
                f"{self.kid}: {type(exc).__name__}",
                reason="SIGNING_KEY_UNAVAILABLE",
                metadata={"kid": self.kid},
            ) from None
        if len(signature) != _SIGNATURE_BYTES:
            raise Unavailable(
                f"the PKCS#11 token returned a {len(signature)}-byte ECDSA signature",
                reason="SIGNING_KEY_UNAVAILABLE",
                metadata={"kid": self.kid},
            )
        return signature

    def public_jwk(self) -> dict[str, str]:
        return dict(self._jwk)

    def __repr__(self) -> str:
        return f"Pkcs11Signer(kid={self.kid!r}, token={self.token_label!r})"


class Pkcs11Token:
    """This process's access to one PKCS#11 token: generate, find and destroy signing
    keys on it. Every method blocks on the token; call them from a worker thread."""

    def __init__(self, module: str, label: str, shared: _SharedSession) -> None:
        self._module = module
        self.label = label
        self._shared = shared
        self._closed = False

    @classmethod
    def open(cls, module: Path, label: str, pin: bytes, *, pin_secret: str) -> Pkcs11Token:
        """Log in to the token labelled ``label`` through the PKCS#11 library ``module``
        with ``pin`` (read from the secret ``pin_secret``, which errors name instead of
        the PIN)."""
        so = str(module)
        with _sessions_lock:
            shared = _sessions.get((so, label))
            if shared is None:
                shared = _login(so, label, pin, pin_secret)
                _sessions[(so, label)] = shared
            elif not hmac.compare_digest(shared.pin_digest, _digest(pin)):
                # The session is logged in already; a different PIN must still fail.
                raise _pin_refused(label, pin_secret, "PinIncorrect")
            shared.users += 1
        return cls(so, label, shared)

    def generate(self) -> Pkcs11Signer:
        """A new P-256 key pair generated on the token. The private key is a token
        object that is private, sensitive, never extractable and may only sign."""
        key_id = os.urandom(_KEY_ID_BYTES)
        with self._shared.lock:
            try:
                parameters = self._shared.session.create_domain_parameters(
                    KeyType.EC,
                    {Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1")},
                    local=True,
                )
                public, private = parameters.generate_keypair(
                    store=True,
                    id=key_id,
                    label="datapunk-signing",
                    public_template={Attribute.VERIFY: True, Attribute.ENCRYPT: False},
                    private_template={
                        Attribute.PRIVATE: True,
                        Attribute.SENSITIVE: True,
                        Attribute.EXTRACTABLE: False,
                        Attribute.SIGN: True,
                        Attribute.DECRYPT: False,
                        Attribute.DERIVE: False,
                        Attribute.UNWRAP: False,
                    },
                )
                jwk = p256_public_jwk(*_ec_point_coordinates(bytes(public[Attribute.EC_POINT])))
                # Name both halves after the kid so an operator can tell them apart.
                public[Attribute.LABEL] = private[Attribute.LABEL] = f"datapunk {jwk['kid']}"
            except PKCS11Error as exc:
                raise self._unavailable("could not generate a key", exc) from None
        return Pkcs11Signer(self._shared, _signing_key(private), key_id, self.label, jwk)

    def signer(self, key_id: bytes) -> Pkcs11Signer:
        """The signer of the key pair with CKA_ID ``key_id``; NotFound when the token
        does not hold it."""
        with self._shared.lock:
            try:
                session = self._shared.session
                private = session.get_key(object_class=ObjectClass.PRIVATE_KEY, id=key_id)
                public = session.get_key(object_class=ObjectClass.PUBLIC_KEY, id=key_id)
                point = bytes(public[Attribute.EC_POINT])
            except NoSuchKey:
                raise NotFound(
                    f"the PKCS#11 token {self.label!r} holds no signing key with id {key_id.hex()}",
                    reason="SIGNING_KEY_NOT_FOUND",
                    metadata={"token_key_id": key_id.hex()},
                ) from None
            except PKCS11Error as exc:
                raise self._unavailable("could not read a key", exc) from None
        jwk = p256_public_jwk(*_ec_point_coordinates(point))
        return Pkcs11Signer(self._shared, _signing_key(private), key_id, self.label, jwk)

    def destroy(self, key_id: bytes) -> bool:
        """Destroy both halves of the key pair with CKA_ID ``key_id``; False when the
        token held neither."""
        destroyed = False
        with self._shared.lock:
            try:
                for object_class in (ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY):
                    for obj in list(
                        self._shared.session.get_objects(
                            {Attribute.CLASS: object_class, Attribute.ID: key_id}
                        )
                    ):
                        obj.destroy()
                        destroyed = True
            except PKCS11Error as exc:
                raise self._unavailable("could not destroy a key", exc) from None
        return destroyed

    def close(self) -> None:
        """Give up this process's share of the session; the last user logs out."""
        if self._closed:
            return
        self._closed = True
        with _sessions_lock:
            self._shared.users -= 1
            if self._shared.users == 0:
                del _sessions[(self._module, self.label)]
                with self._shared.lock:
                    self._shared.session.close()

    def _unavailable(self, what: str, exc: PKCS11Error) -> Unavailable:
        return Unavailable(
            f"the PKCS#11 token {self.label!r} {what}: {type(exc).__name__}",
            reason="SIGNING_TOKEN_UNAVAILABLE",
            metadata={"token": self.label},
        )


def _login(module: str, label: str, pin: bytes, pin_secret: str) -> _SharedSession:
    try:
        lib = pkcs11.lib(module)
    except (OSError, RuntimeError, PKCS11Error) as exc:
        raise FailedPrecondition(
            f"the PKCS#11 library {module} cannot be loaded ({type(exc).__name__}); "
            "install SoftHSM2 or set nexus.auth.signing.pkcs11_module",
            reason="SIGNING_TOKEN_UNAVAILABLE",
            metadata={"module": module},
        ) from None
    try:
        token = lib.get_token(token_label=label)
        session = token.open(rw=True, user_pin=pin.decode("utf-8"))
    except NoSuchToken:
        raise FailedPrecondition(
            f"no PKCS#11 token is labelled {label!r} in {module} (for SoftHSM2: is "
            "SOFTHSM2_CONF set and the token initialised?)",
            reason="SIGNING_TOKEN_UNAVAILABLE",
            metadata={"token": label},
        ) from None
    except (PinIncorrect, PinInvalid, PinLenRange, PinLocked, UnicodeDecodeError) as exc:
        raise _pin_refused(label, pin_secret, type(exc).__name__) from None
    except PKCS11Error as exc:
        raise FailedPrecondition(
            f"the PKCS#11 token {label!r} cannot be opened ({type(exc).__name__})",
            reason="SIGNING_TOKEN_UNAVAILABLE",
            metadata={"token": label},
        ) from None
    mechanisms = token.slot.get_mechanisms()
    mechanism = Mechanism.ECDSA_SHA256 if Mechanism.ECDSA_SHA256 in mechanisms else None
    if mechanism is None and Mechanism.ECDSA in mechanisms:
        mechanism = Mechanism.ECDSA
    if mechanism is None or Mechanism.EC_KEY_PAIR_GEN not in mechanisms:
        session.close()
        raise FailedPrecondition(
            f"the PKCS#11 token {label!r} cannot generate P-256 keys or sign with ECDSA",
            reason="SIGNING_TOKEN_UNAVAILABLE",
            metadata={"token": label},
        )
    return _SharedSession(session, mechanism, _digest(pin))


def _digest(pin: bytes) -> bytes:
    return hashlib.sha256(pin).digest()


def _pin_refused(label: str, pin_secret: str, why: str) -> FailedPrecondition:
    return FailedPrecondition(
        f"the PKCS#11 token {label!r} refused the PIN from secret {pin_secret!r} ({why})",
        reason="SIGNING_TOKEN_LOGIN_FAILED",
        metadata={"token": label, "secret": pin_secret},
    )


def _ec_point_coordinates(ec_point: bytes) -> tuple[bytes, bytes]:
    """x and y of a CKA_EC_POINT: an uncompressed point (0x04 || x || y), DER-wrapped in
    an OCTET STRING as PKCS#11 says, or bare as some tokens return it."""
    raw = ec_point
    if len(raw) == 3 + _SIGNATURE_BYTES and raw[:2] == bytes([0x04, 1 + _SIGNATURE_BYTES]):
        raw = raw[2:]  # DER: OCTET STRING tag, length 65, then the point
    if len(raw) != 1 + _SIGNATURE_BYTES or raw[0] != 4:
        raise ValueError("not an uncompressed P-256 point")
    return raw[1 : 1 + COORDINATE_BYTES], raw[1 + COORDINATE_BYTES :]


def _signing_key(key: object) -> SignMixin:
    if not isinstance(key, SignMixin):
        raise TypeError("the token returned a private key that cannot sign")
    return key
