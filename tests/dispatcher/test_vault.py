"""The vault's cryptography and keyring settings, without a database."""

import base64
import os
import stat
from pathlib import Path

import pytest
from pydantic import SecretStr

from dispatcher.vault import (
    EXAMPLE_KEK,
    Keyring,
    Sealed,
    VaultError,
    fingerprint,
    new_data_key,
    parse_keyring,
    seal,
    unseal,
)
from schemas.credentials import (
    BedrockCredential,
    CredentialSecret,
    OpenAICredential,
    VertexCredential,
)

API_KEY = "sk-test-0123456789abcdefa1b2"
SECRET = OpenAICredential(api_key=SecretStr(API_KEY), organization="org-1")
SERVICE_ACCOUNT = {
    "type": "service_account",
    "client_email": "runner@project.iam.gserviceaccount.com",
    "private_key_id": "0123456789abcdefc0de",
    "private_key": "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n",
    "token_uri": "https://oauth2.googleapis.com/token",
}


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def test_sealed_secret_round_trips_and_hides_the_plaintext() -> None:
    data_key = new_data_key()
    sealed = seal(data_key, "ten_a", "cred_1", SECRET)

    assert API_KEY.encode() not in sealed.ciphertext
    assert unseal(data_key, "ten_a", "cred_1", "openai", sealed) == SECRET


def test_every_seal_uses_a_fresh_nonce() -> None:
    data_key = new_data_key()
    first, second = (seal(data_key, "ten_a", "cred_1", SECRET) for _ in range(2))
    assert len(first.nonce) == 12
    assert first.nonce != second.nonce
    assert first.ciphertext != second.ciphertext


@pytest.mark.parametrize(
    ("owner_id", "credential_id", "provider"),
    [("ten_b", "cred_1", "openai"), ("ten_a", "cred_2", "openai"), ("ten_a", "cred_1", "fal")],
    ids=["other-tenant", "other-credential", "other-provider"],
)
def test_ciphertext_moved_elsewhere_fails_with_a_message_naming_ids_only(
    owner_id: str, credential_id: str, provider: str
) -> None:
    data_key = new_data_key()
    sealed = seal(data_key, "ten_a", "cred_1", SECRET)

    with pytest.raises(VaultError, match=f"credential {credential_id} cannot be decrypted") as err:
        unseal(data_key, owner_id, credential_id, provider, sealed)
    assert API_KEY[-4:] not in str(err.value)
    assert err.value.__cause__ is None


def test_ciphertext_under_another_data_key_fails() -> None:
    sealed = seal(new_data_key(), "ten_a", "cred_1", SECRET)
    with pytest.raises(VaultError):
        unseal(new_data_key(), "ten_a", "cred_1", "openai", sealed)


def test_tampered_ciphertext_fails() -> None:
    data_key = new_data_key()
    nonce, ciphertext = seal(data_key, "ten_a", "cred_1", SECRET)
    flipped = bytes([ciphertext[0] ^ 1]) + ciphertext[1:]
    with pytest.raises(VaultError):
        unseal(data_key, "ten_a", "cred_1", "openai", Sealed(nonce, flipped))


def test_data_key_unwraps_only_for_its_owner_with_its_kek() -> None:
    keyring = Keyring({"kek1": os.urandom(32)}, active="kek1")
    data_key = new_data_key()
    wrapped = keyring.wrap("ten_a", data_key)

    assert wrapped.kek_id == "kek1"
    assert keyring.unwrap("ten_a", wrapped) == data_key
    with pytest.raises(VaultError, match="ten_b"):
        keyring.unwrap("ten_b", wrapped)
    with pytest.raises(VaultError, match="cannot be unwrapped"):
        Keyring({"kek1": os.urandom(32)}, active="kek1").unwrap("ten_a", wrapped)
    with pytest.raises(VaultError, match=r"'kek1'.*does not hold"):
        Keyring({"kek2": os.urandom(32)}, active="kek2").unwrap("ten_a", wrapped)


def test_rewrapped_data_key_opens_after_the_old_kek_is_removed() -> None:
    old, new = os.urandom(32), os.urandom(32)
    data_key = new_data_key()
    wrapped = Keyring({"kek1": old}, active="kek1").wrap("ten_a", data_key)

    both = Keyring({"kek1": old, "kek2": new}, active="kek2")
    rewrapped = both.wrap("ten_a", both.unwrap("ten_a", wrapped))

    assert rewrapped.kek_id == "kek2"
    assert Keyring({"kek2": new}, active="kek2").unwrap("ten_a", rewrapped) == data_key


def test_keyring_repr_shows_no_key_material() -> None:
    key = os.urandom(32)
    text = repr(Keyring({"kek1": key}, active="kek1"))
    assert "kek1" in text
    assert str(key)[2:10] not in text
    assert b64(key) not in text


def test_decrypted_secret_repr_and_str_hide_the_key() -> None:
    data_key = new_data_key()
    secret = unseal(
        data_key, "ten_a", "cred_1", "openai", seal(data_key, "ten_a", "cred_1", SECRET)
    )
    assert API_KEY not in repr(secret)
    assert API_KEY not in str(secret)


@pytest.mark.parametrize(
    ("secret", "expected"),
    [
        (SECRET, "…a1b2"),
        (
            BedrockCredential(
                region="us-east-1",
                access_key_id="AKIAEXAMPLE",
                secret_access_key=SecretStr("wJalrXUtnFEMI/K7MDENG/bPxRfiCYzzzz"),
            ),
            "…zzzz",
        ),
        (BedrockCredential(region="us-east-1", api_key=SecretStr("ABSKbedrockkey9876")), "…9876"),
        (VertexCredential(service_account=SERVICE_ACCOUNT), "…c0de"),
        (OpenAICredential(api_key=SecretStr("short")), "…"),
    ],
    ids=["api-key", "sigv4", "bedrock-api-key", "service-account", "short"],
)
def test_fingerprint_is_at_most_the_last_four_characters(
    secret: CredentialSecret, expected: str
) -> None:
    assert fingerprint(secret) == expected


def test_keyring_parses_several_keys_and_the_active_one() -> None:
    one, two = os.urandom(32), os.urandom(32)
    keyring = parse_keyring(
        f"kek1:{b64(one)}, kek2:{b64(two)}", "kek2", development=False, var_dir=Path("/none")
    )
    assert keyring.keys == {"kek1": one, "kek2": two}
    assert keyring.active == "kek2"


def test_single_key_is_active_without_naming_it() -> None:
    keyring = parse_keyring(
        SecretStr(f"k:{b64(os.urandom(32))}"), None, development=False, var_dir=Path("/none")
    )
    assert keyring.active == "k"


@pytest.mark.parametrize(
    ("active", "message"),
    [(None, "DISPATCHER_KEK_ACTIVE"), ("kek9", "'kek9', not in the keyring")],
)
def test_active_key_must_be_named_and_known(active: str | None, message: str) -> None:
    text = f"kek1:{b64(os.urandom(32))},kek2:{b64(os.urandom(32))}"
    with pytest.raises(VaultError, match=message):
        parse_keyring(text, active, development=False, var_dir=Path("/none"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (None, "DISPATCHER_KEK is not set"),
        ("  ", "DISPATCHER_KEK is not set"),
        ("changeme", "DISPATCHER_KEK is a placeholder"),
        (f"kek1:{b64(bytes(32))}", "'kek1' is a placeholder"),
        (f"kek1:{b64(b'changeme' * 4)}", "'kek1' is a placeholder"),
        (EXAMPLE_KEK, "'kek1' is a placeholder"),
    ],
    ids=["missing", "blank", "placeholder-word", "all-zero", "repeated-word", "documented-example"],
)
def test_weak_or_missing_key_is_refused_outside_development(text: str, message: str) -> None:
    with pytest.raises(VaultError, match=message):
        parse_keyring(text, None, development=False, var_dir=Path("/none"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (f"kek1:{b64(os.urandom(16))}", "'kek1' is not 32 bytes"),
        ("kek1:not base64!", "'kek1' is not base64"),
        (b64(os.urandom(32)), "not a list of `<key id>:<base64>`"),
        (f"a:{b64(os.urandom(32))},a:{b64(os.urandom(32))}", "'a' twice"),
    ],
    ids=["short", "not-base64", "no-key-id", "duplicate-id"],
)
@pytest.mark.parametrize("development", [False, True], ids=["production", "development"])
def test_malformed_key_is_refused_everywhere(text: str, message: str, development: bool) -> None:
    with pytest.raises(VaultError, match=message) as err:
        parse_keyring(text, None, development=development, var_dir=Path("/none"))
    assert text.rsplit(":", 1)[-1] not in str(err.value)


def test_placeholder_key_is_accepted_in_development() -> None:
    keyring = parse_keyring(f"kek1:{b64(bytes(32))}", None, development=True, var_dir=Path("/none"))
    assert keyring.keys == {"kek1": bytes(32)}


@pytest.mark.parametrize("text", [None, "changeme"])
def test_development_without_a_key_generates_one_that_survives_restarts(
    text: str | None, tmp_path: Path
) -> None:
    first = parse_keyring(text, None, development=True, var_dir=tmp_path / "var")
    again = parse_keyring(text, None, development=True, var_dir=tmp_path / "var")

    assert first.active == "dev"
    assert first.keys == again.keys
    assert len(first.keys["dev"]) == 32
    key_file = tmp_path / "var" / "dev-kek"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert [path.name for path in key_file.parent.iterdir()] == ["dev-kek"]
