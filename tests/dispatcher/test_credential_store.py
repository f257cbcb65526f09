"""Credentials in the store, on SQLite and (with TEST_DATABASE_URL) Postgres.

On Postgres the database is shared by the whole session: each test uses fresh owner ids.
"""

import os
from collections.abc import Iterator

import pytest
from pydantic import SecretStr
from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select, update

from dispatcher.ids import new_id
from dispatcher.models import Credential, DataKey
from dispatcher.store.credentials import (
    delete_credential,
    get_credential,
    kek_ids_in_use,
    list_credentials,
    load_secret,
    mark_all_healthy,
    mark_unhealthy,
    put_credential,
    rotate,
)
from dispatcher.vault import PLATFORM_OWNER, Keyring, VaultError
from schemas.credentials import AnthropicCredential, OpenAICredential

KEK1, KEK2 = os.urandom(32), os.urandom(32)
KEYRING = Keyring({"kek1": KEK1}, active="kek1")
OPENAI = OpenAICredential(api_key=SecretStr("sk-first-0123456789abcd1111"))
ANTHROPIC = AnthropicCredential(api_key=SecretStr("sk-ant-0123456789abcdef2222"))


@pytest.fixture
def session(engine: Engine) -> Iterator[Session]:
    with Session(engine) as session:
        yield session


@pytest.fixture
def tenant() -> str:
    return new_id("ten")


def test_put_then_get_and_list_show_metadata_only(session: Session, tenant: str) -> None:
    put_credential(session, KEYRING, tenant, "main", OPENAI)
    put_credential(session, KEYRING, tenant, "claude", ANTHROPIC)
    session.commit()

    found = get_credential(session, tenant, "main")
    assert found is not None
    assert (found.name, found.provider, found.fingerprint) == ("main", "openai", "…1111")
    assert found.healthy
    assert found.last_used_at is None
    assert [c.name for c in list_credentials(session, tenant)] == ["claude", "main"]
    assert "sk-first" not in found.model_dump_json()
    assert get_credential(session, tenant, "absent") is None


def test_load_secret_decrypts_and_records_use(session: Session, tenant: str) -> None:
    put_credential(session, KEYRING, tenant, "main", OPENAI)
    session.commit()

    assert load_secret(session, KEYRING, tenant, "main") == OPENAI
    session.commit()
    found = get_credential(session, tenant, "main")
    assert found is not None
    assert found.last_used_at is not None


def test_replacing_reseals_under_a_new_nonce(session: Session, tenant: str) -> None:
    put_credential(session, KEYRING, tenant, "main", OPENAI)
    before = _row(session, tenant, "main")
    nonce = before.nonce
    second = OpenAICredential(api_key=SecretStr("sk-second-0123456789abcd3333"))

    replaced = put_credential(session, KEYRING, tenant, "main", second)
    session.commit()

    assert replaced.fingerprint == "…3333"
    assert _row(session, tenant, "main").nonce != nonce
    assert load_secret(session, KEYRING, tenant, "main") == second
    assert len(list_credentials(session, tenant)) == 1


def test_two_live_credentials_cannot_share_a_name(session: Session, tenant: str) -> None:
    put_credential(session, KEYRING, tenant, "main", OPENAI)
    twin = _row(session, tenant, "main").model_copy(update={"id": new_id("cred")})
    session.add(Credential.model_validate(twin))
    with pytest.raises(IntegrityError):
        session.commit()


def test_one_data_key_per_owner(session: Session, tenant: str) -> None:
    put_credential(session, KEYRING, tenant, "main", OPENAI)
    put_credential(session, KEYRING, tenant, "claude", ANTHROPIC)
    session.commit()
    keys = session.exec(select(DataKey).where(DataKey.owner_id == tenant)).all()
    assert [key.kek_id for key in keys] == ["kek1"]


def test_deleted_credential_is_gone_at_once_and_its_ciphertext_erased(
    session: Session, tenant: str
) -> None:
    put_credential(session, KEYRING, tenant, "main", OPENAI)
    session.commit()

    assert delete_credential(session, tenant, "main")
    session.commit()

    assert load_secret(session, KEYRING, tenant, "main") is None
    assert get_credential(session, tenant, "main") is None
    assert list_credentials(session, tenant) == []
    revoked = session.exec(select(Credential).where(Credential.owner_id == tenant)).one()
    assert (revoked.nonce, revoked.ciphertext) == (None, None)
    assert not delete_credential(session, tenant, "main")


def test_revoked_name_can_be_used_again(session: Session, tenant: str) -> None:
    put_credential(session, KEYRING, tenant, "main", OPENAI)
    delete_credential(session, tenant, "main")
    put_credential(session, KEYRING, tenant, "main", ANTHROPIC)
    delete_credential(session, tenant, "main")
    put_credential(session, KEYRING, tenant, "main", OPENAI)
    session.commit()

    assert load_secret(session, KEYRING, tenant, "main") == OPENAI
    assert len(session.exec(select(Credential).where(Credential.owner_id == tenant)).all()) == 3


def test_tenant_cannot_reach_another_tenants_credential(session: Session, tenant: str) -> None:
    other = new_id("ten")
    put_credential(session, KEYRING, tenant, "main", OPENAI)
    session.commit()

    assert load_secret(session, KEYRING, other, "main") is None
    assert get_credential(session, other, "main") is None
    assert not delete_credential(session, other, "main")
    assert not mark_unhealthy(session, other, "main", "nope")
    put_credential(session, KEYRING, other, "main", ANTHROPIC)
    session.commit()
    assert load_secret(session, KEYRING, tenant, "main") == OPENAI
    assert load_secret(session, KEYRING, other, "main") == ANTHROPIC


def test_ciphertext_copied_into_another_tenant_fails_closed(session: Session, tenant: str) -> None:
    other = new_id("ten")
    put_credential(session, KEYRING, tenant, "main", OPENAI)
    put_credential(session, KEYRING, other, "decoy", ANTHROPIC)  # other has a data key
    source = _row(session, tenant, "main")
    copy = source.model_copy(update={"id": new_id("cred"), "owner_id": other, "name": "stolen"})
    session.add(Credential.model_validate(copy))
    session.commit()

    with pytest.raises(VaultError, match=r"cannot be decrypted: it does not belong here") as err:
        load_secret(session, KEYRING, other, "stolen")
    assert "sk-first" not in str(err.value)


def test_credential_moved_to_another_owner_fails_closed(session: Session, tenant: str) -> None:
    other = new_id("ten")
    put_credential(session, KEYRING, tenant, "main", OPENAI)
    put_credential(session, KEYRING, other, "decoy", ANTHROPIC)
    session.exec(
        update(Credential)
        .where(col(Credential.owner_id) == tenant, col(Credential.name) == "main")
        .values(owner_id=other)
    )
    session.commit()

    with pytest.raises(VaultError):
        load_secret(session, KEYRING, other, "main")


def test_owner_without_a_data_key_fails_closed(session: Session, tenant: str) -> None:
    put_credential(session, KEYRING, tenant, "main", OPENAI)
    stranger = new_id("ten")
    session.exec(
        update(Credential).where(col(Credential.owner_id) == tenant).values(owner_id=stranger)
    )
    session.commit()

    with pytest.raises(VaultError, match="has no data key"):
        load_secret(session, KEYRING, stranger, "main")


def test_platform_credentials_live_apart_from_tenants(session: Session, tenant: str) -> None:
    name = new_id("shared")
    put_credential(session, KEYRING, PLATFORM_OWNER, name, OPENAI)
    session.commit()

    assert load_secret(session, KEYRING, PLATFORM_OWNER, name) == OPENAI
    assert load_secret(session, KEYRING, tenant, name) is None
    assert name in [c.name for c in list_credentials(session, PLATFORM_OWNER)]
    assert delete_credential(session, PLATFORM_OWNER, name)


def test_rotation_rewraps_data_keys_so_the_old_kek_can_go(session: Session, tenant: str) -> None:
    owners = [tenant, new_id("ten"), PLATFORM_OWNER]
    name = new_id("cred")
    for owner in owners:
        put_credential(session, KEYRING, owner, name, OPENAI)
    session.commit()
    both = Keyring({"kek1": KEK1, "kek2": KEK2}, active="kek2")

    result = rotate(session, both)
    session.commit()

    assert result.rotated >= len(owners)
    assert not set(owners) & set(result.unreadable)
    assert rotate(session, both).rotated == 0
    assert "kek2" in kek_ids_in_use(session)
    new_only = Keyring({"kek2": KEK2}, active="kek2")
    for owner in owners:
        assert load_secret(session, new_only, owner, name) == OPENAI
    with pytest.raises(VaultError, match=r"'kek2'.*does not hold"):
        load_secret(session, KEYRING, tenant, name)


def test_rotation_reports_data_keys_it_cannot_unwrap(session: Session, tenant: str) -> None:
    put_credential(session, Keyring({"lost": os.urandom(32)}, active="lost"), tenant, "m", OPENAI)
    session.commit()

    result = rotate(session, Keyring({"kek3": os.urandom(32)}, active="kek3"))
    session.commit()

    assert tenant in result.unreadable
    assert session.get(DataKey, tenant) is not None
    assert session.get(DataKey, tenant).kek_id == "lost"  # type: ignore[union-attr]


def test_health_marks_write_only_when_the_state_changes(session: Session, tenant: str) -> None:
    put_credential(session, KEYRING, tenant, "main", OPENAI)
    session.commit()

    assert mark_unhealthy(session, tenant, "main", "auth_failed: 401 " + "x" * 500)
    assert not mark_unhealthy(session, tenant, "main", "quota_exhausted")
    session.commit()
    found = get_credential(session, tenant, "main")
    assert found is not None
    assert not found.healthy
    assert found.health_reason is not None
    assert found.health_reason.startswith("auth_failed")
    assert len(found.health_reason) == 200

    assert mark_all_healthy(session.connection(), [(tenant, "main")]) == [tenant]
    assert mark_all_healthy(session.connection(), [(tenant, "main")]) == []
    session.commit()
    assert get_credential(session, tenant, "main") == found.model_copy(
        update={"healthy": True, "health_reason": None}
    )


def test_replacing_an_unhealthy_credential_makes_it_healthy(session: Session, tenant: str) -> None:
    put_credential(session, KEYRING, tenant, "main", OPENAI)
    mark_unhealthy(session, tenant, "main", "auth_failed")

    replaced = put_credential(session, KEYRING, tenant, "main", OPENAI)

    assert replaced.healthy
    assert replaced.health_reason is None


def _row(session: Session, owner_id: str, name: str) -> Credential:
    return session.exec(
        select(Credential).where(
            Credential.owner_id == owner_id,
            Credential.name == name,
            col(Credential.deleted_at).is_(None),
        )
    ).one()
