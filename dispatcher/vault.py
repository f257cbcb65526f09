"""The credential vault: AES-256-GCM envelope encryption.

    keyring (settings)        KEKs by id; one is active
      '-- wraps -->  data key (DEK), one per owner: a tenant, or ``PLATFORM_OWNER``
            '-- seals -->  a credential's secret JSON, fresh 96-bit nonce,
                           associated data = (owner id, credential id, provider)

A ciphertext moved to another row, owner or provider, a data key moved to another owner, or a
KEK missing from the keyring fails to open: a ``VaultError`` naming ids only, never a value.
Rotating the KEK re-wraps data keys only (``dispatcher.store.credentials.rotate``).
"""

import base64
import binascii
import contextlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import structlog
from pydantic import SecretStr, TypeAdapter, ValidationError

from schemas.credentials import BedrockCredential, CredentialSecret, VertexCredential

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from dispatcher.settings import Settings

log = structlog.get_logger(__name__)

#: The owner id of the platform's shared credentials (tenant ids all start with ``ten_``).
PLATFORM_OWNER = "platform"
#: The settings that hold the keyring, as the operator sets them.
KEK_SETTING = "DISPATCHER_KEK"
KEK_ACTIVE_SETTING = "DISPATCHER_KEK_ACTIVE"
#: The key the documentation shows; refused outside development like any placeholder.
EXAMPLE_KEK = "kek1:TgVV1sRk5QgVYZJ23gjCWjAFY0ycyOdGZsaOjgkWA0c="
DEV_KEK_FILE = "dev-kek"

_KEY_BYTES = 32
_NONCE_BYTES = 12
_KEY_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_PLACEHOLDERS = {"changeme", "change-me", "change_me", "placeholder", "secret", "example", "xxx"}
_HOW = (
    "set it to `<key id>:<base64 of 32 random bytes>`, e.g. from "
    '`python -c "import base64,os; print(base64.b64encode(os.urandom(32)).decode())"`'
)
_SECRET: TypeAdapter[CredentialSecret] = TypeAdapter(CredentialSecret)


class VaultError(Exception):
    """A key or ciphertext the vault cannot use. Its message names ids and settings only."""


class WrappedKey(NamedTuple):
    kek_id: str
    wrapped: bytes


class Sealed(NamedTuple):
    nonce: bytes
    ciphertext: bytes


@dataclass(frozen=True, eq=False)
class Keyring:
    """Key-encryption keys by id (32 raw bytes each), and the id that wraps new data keys."""

    keys: Mapping[str, bytes] = field(repr=False)
    active: str

    def __post_init__(self) -> None:
        if self.active not in self.keys:
            raise VaultError(f"{KEK_ACTIVE_SETTING} names {self.active!r}, not in the keyring")
        for key_id, key in self.keys.items():
            if len(key) != _KEY_BYTES:
                raise VaultError(f"{KEK_SETTING}: key {key_id!r} is not {_KEY_BYTES} bytes")

    def wrap(self, owner_id: str, data_key: bytes) -> WrappedKey:
        """``data_key`` encrypted under the active KEK, bound to its owner and the KEK id."""
        nonce = os.urandom(_NONCE_BYTES)
        sealed = _aesgcm(self.keys[self.active]).encrypt(
            nonce, data_key, _aad("dek", owner_id, self.active)
        )
        return WrappedKey(self.active, nonce + sealed)

    def unwrap(self, owner_id: str, wrapped: WrappedKey) -> bytes:
        kek = self.keys.get(wrapped.kek_id)
        if kek is None:
            raise VaultError(
                f"the data key of {owner_id} is wrapped by KEK {wrapped.kek_id!r}, "
                f"which {KEK_SETTING} does not hold"
            )
        nonce, sealed = wrapped.wrapped[:_NONCE_BYTES], wrapped.wrapped[_NONCE_BYTES:]
        try:
            return _aesgcm(kek).decrypt(nonce, sealed, _aad("dek", owner_id, wrapped.kek_id))
        except _invalid_tag():
            raise VaultError(
                f"the data key of {owner_id} cannot be unwrapped with KEK {wrapped.kek_id!r}: "
                "it does not belong here or the key is wrong"
            ) from None


def new_data_key() -> bytes:
    return os.urandom(32)


def seal(data_key: bytes, owner_id: str, credential_id: str, secret: CredentialSecret) -> Sealed:
    """The secret's JSON under the owner's data key, bound to owner, credential and provider."""
    plaintext = json.dumps(secret.model_dump(), default=_reveal).encode()
    nonce = os.urandom(_NONCE_BYTES)
    aad = _aad("credential", owner_id, credential_id, secret.provider)
    return Sealed(nonce, _aesgcm(data_key).encrypt(nonce, plaintext, aad))


def unseal(
    data_key: bytes, owner_id: str, credential_id: str, provider: str, sealed: Sealed
) -> CredentialSecret:
    """The secret ``seal`` stored; a ``VaultError`` if anything it was bound to differs."""
    aad = _aad("credential", owner_id, credential_id, provider)
    try:
        plaintext = _aesgcm(data_key).decrypt(sealed.nonce, sealed.ciphertext, aad)
    except _invalid_tag():
        raise VaultError(
            f"credential {credential_id} cannot be decrypted: "
            "it does not belong here or its key is missing"
        ) from None
    secret = _parse_secret(plaintext)
    if secret is None or secret.provider != provider:
        # Nothing of the plaintext, nor the validation error that quotes it, travels on.
        raise VaultError(f"credential {credential_id} decrypts to no valid {provider} credential")
    return secret


def fingerprint(secret: CredentialSecret) -> str:
    """The last 4 characters of the main secret, e.g. ``…a1b2``; just ``…`` if it is short."""
    main = _main_secret(secret)
    return "…" + (main[-4:] if len(main) >= 12 else "")


def parse_keyring(
    text: str | SecretStr | None, active: str | None, *, development: bool, var_dir: Path
) -> Keyring:
    """The keyring from the settings: ``kek1:<base64 of 32 bytes>,kek2:<...>``.

    Outside development a missing, placeholder or weak key is refused. In development a
    missing or placeholder setting falls back to a key generated once under ``var_dir``.
    """
    value = (text.get_secret_value() if isinstance(text, SecretStr) else text or "").strip()
    if not value or value.lower() in _PLACEHOLDERS:
        if not development:
            raise VaultError(f"{KEK_SETTING} is {'a placeholder' if value else 'not set'}: {_HOW}")
        path = _dev_key_file(var_dir)
        log.warning("no key-encryption key set: using the development key", path=str(path))
        return parse_keyring(path.read_text(), None, development=True, var_dir=var_dir)
    keys = _parse_keys(value)
    for key_id, key in keys.items():
        _check_strength(key_id, key, development)
    if active is None and len(keys) > 1:
        raise VaultError(f"{KEK_SETTING} holds several keys: set {KEK_ACTIVE_SETTING} to one")
    return Keyring(keys, active or next(iter(keys)))


def _aad(*parts: str) -> bytes:
    return json.dumps(["v1", *parts]).encode()


def _reveal(value: object) -> str:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    raise TypeError(f"cannot serialize {type(value).__name__}")


def _parse_secret(plaintext: bytes) -> CredentialSecret | None:
    try:
        return _SECRET.validate_json(plaintext)
    except ValidationError:
        return None


def _main_secret(secret: CredentialSecret) -> str:
    if isinstance(secret, VertexCredential):
        return str(secret.service_account.get("private_key_id") or "")
    if isinstance(secret, BedrockCredential):
        main = secret.secret_access_key or secret.api_key
        return main.get_secret_value() if main else ""
    return secret.api_key.get_secret_value()


def _parse_keys(value: str) -> dict[str, bytes]:
    keys: dict[str, bytes] = {}
    for entry in value.split(","):
        key_id, _, encoded = entry.strip().partition(":")
        if not _KEY_ID.fullmatch(key_id) or not encoded:
            raise VaultError(f"{KEK_SETTING} is not a list of `<key id>:<base64>`: {_HOW}")
        if key_id in keys:
            raise VaultError(f"{KEK_SETTING} names key {key_id!r} twice")
        keys[key_id] = _decode_key(key_id, encoded)
    return keys


def _decode_key(key_id: str, encoded: str) -> bytes:
    try:
        key = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise VaultError(f"{KEK_SETTING}: key {key_id!r} is not base64: {_HOW}") from None
    if len(key) != _KEY_BYTES:
        raise VaultError(f"{KEK_SETTING}: key {key_id!r} is not {_KEY_BYTES} bytes: {_HOW}")
    return key


def _check_strength(key_id: str, key: bytes, development: bool) -> None:
    """Refuse the documented example and keys with few distinct bytes (all-zero, repeated words);
    32 random bytes have about 30, and fewer than 16 by chance about once in 10**15."""
    weak = key == base64.b64decode(EXAMPLE_KEK.partition(":")[2]) or len(set(key)) < 16
    if not weak:
        return
    if not development:
        raise VaultError(
            f"{KEK_SETTING}: key {key_id!r} is a placeholder, not a random key: {_HOW}"
        )
    log.warning("the key-encryption key is a placeholder: development only", key_id=key_id)


def _dev_key_file(var_dir: Path) -> Path:
    """``var_dir/dev-kek``, created once (atomically, so concurrent processes agree)."""
    path = var_dir / DEV_KEK_FILE
    if path.exists():
        return path
    var_dir.mkdir(parents=True, exist_ok=True)
    draft = var_dir / f".{DEV_KEK_FILE}.{os.getpid()}"
    fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(f"dev:{base64.b64encode(new_data_key()).decode()}\n")
    try:
        with contextlib.suppress(FileExistsError):  # another process got there first: theirs
            os.link(draft, path)
    finally:
        draft.unlink()
    return path


def keyring_for(settings: "Settings") -> Keyring:
    """The keyring the settings describe (see ``parse_keyring``)."""
    return parse_keyring(
        settings.kek,
        settings.kek_active,
        development=settings.development,
        var_dir=settings.var_dir,
    )


def _aesgcm(key: bytes) -> "AESGCM":
    """The cipher, imported on first use: the API's submit path never opens the vault, and
    ``cryptography`` costs its process several MiB."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    return AESGCM(key)


def _invalid_tag() -> type[Exception]:
    from cryptography.exceptions import InvalidTag

    return InvalidTag
