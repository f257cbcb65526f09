"""Standard Webhooks signing (https://www.standardwebhooks.com).

A tenant's webhook secret is ``whsec_`` + the base64 of random bytes. A delivery carries three
headers: ``webhook-id``, ``webhook-timestamp`` (integer seconds since the epoch) and
``webhook-signature``, which lists ``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`` once
per secret, space-separated. During a rotation both the old and the new secret sign, so a receiver
holding either one accepts.

Errors::

    ValueError
     ├── InvalidSecret   a secret that is not ``whsec_`` + base64 of 24 to 64 bytes
     └── BadSignature    verify(): a header missing, the timestamp out of tolerance, no match
"""

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Mapping, Sequence
from secrets import token_bytes

SECRET_PREFIX = "whsec_"  # noqa: S105 - a prefix, not a secret
HEADER_ID = "webhook-id"
HEADER_TIMESTAMP = "webhook-timestamp"
HEADER_SIGNATURE = "webhook-signature"
#: How far a timestamp may stray from the receiver's clock (the reference library's 5 minutes).
TOLERANCE_S = 300
_KEY_BYTES = range(24, 65)


class InvalidSecret(ValueError):
    """A webhook secret that is not ``whsec_`` + base64 of 24 to 64 bytes."""


class BadSignature(ValueError):
    """A delivery that does not verify: a header missing, a stale timestamp, or no signature."""


def new_secret(nbytes: int = 32) -> str:
    """A fresh ``whsec_`` secret of ``nbytes`` (24 to 32) random bytes."""
    if not 24 <= nbytes <= 32:
        raise ValueError("a new webhook secret has 24 to 32 random bytes")
    return SECRET_PREFIX + base64.b64encode(token_bytes(nbytes)).decode("ascii")


def sign(msg_id: str, timestamp: int, body: bytes, secrets: Sequence[str]) -> dict[str, str]:
    """The three Standard Webhooks headers for ``body``, signed once with each of ``secrets``."""
    if isinstance(secrets, str):
        raise TypeError("secrets is a list of secrets, not one string")
    if not secrets:
        raise InvalidSecret("no secret to sign with")
    _check_id(msg_id)
    content = _signed_content(msg_id, timestamp, body)
    signatures = " ".join(_signature(_key(secret), content) for secret in secrets)
    return {HEADER_ID: msg_id, HEADER_TIMESTAMP: str(timestamp), HEADER_SIGNATURE: signatures}


def verify(
    body: bytes,
    headers: Mapping[str, str],
    secrets: Sequence[str],
    *,
    now: float | None = None,
    tolerance_s: float = TOLERANCE_S,
) -> None:
    """Raise ``BadSignature`` unless one signature in ``headers`` matches one of ``secrets`` and
    the timestamp is within ``tolerance_s`` of ``now``. Header names are case-insensitive."""
    fields = {name.lower(): value for name, value in headers.items()}
    missing = [h for h in (HEADER_ID, HEADER_TIMESTAMP, HEADER_SIGNATURE) if not fields.get(h)]
    if missing:
        raise BadSignature(f"missing header {missing[0]}")
    now = time.time() if now is None else now
    timestamp = _timestamp(fields[HEADER_TIMESTAMP], now, tolerance_s)
    content = _signed_content(fields[HEADER_ID], timestamp, body)
    expected = [_signature(_key(secret), content).encode() for secret in secrets]
    offered = [signature.encode() for signature in fields[HEADER_SIGNATURE].split()]
    if not any(hmac.compare_digest(e, o) for e in expected for o in offered):
        raise BadSignature("no signature matches")


def _check_id(msg_id: str) -> None:
    """Ids with a dot could make two different (id, timestamp, body) sign the same bytes."""
    if not msg_id or "." in msg_id or " " in msg_id or not msg_id.isprintable():
        raise ValueError("a webhook id is non-empty, printable, and has no dots or spaces")


def _timestamp(header: str, now: float, tolerance_s: float) -> int:
    if not (header.isascii() and header.isdigit()):
        raise BadSignature("webhook-timestamp is not integer seconds")
    timestamp = int(header)
    if abs(now - timestamp) > tolerance_s:
        raise BadSignature("webhook-timestamp is outside the tolerance")
    return timestamp


def _key(secret: str) -> bytes:
    """The HMAC key inside a ``whsec_`` secret. Messages never quote the secret."""
    if not secret.startswith(SECRET_PREFIX):
        raise InvalidSecret(f"a webhook secret starts with {SECRET_PREFIX!r}")
    try:
        key = base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except binascii.Error:
        raise InvalidSecret("a webhook secret is whsec_ + base64") from None
    if len(key) not in _KEY_BYTES:
        raise InvalidSecret("a webhook secret holds 24 to 64 bytes")
    return key


def _signed_content(msg_id: str, timestamp: int, body: bytes) -> bytes:
    return f"{msg_id}.{timestamp}.".encode() + body


def _signature(key: bytes, content: bytes) -> str:
    digest = hmac.new(key, content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")
