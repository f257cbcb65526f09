"""Cooldowns in Redis: the embedded one, and the machine's when TEST_REDIS_URL names it."""

import time
import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
import redis

from dispatcher.cooldowns import MAX_COOLDOWN_S, Cooldowns, cooldown_s
from dispatcher.db import utcnow
from schemas.hops import Hop
from tests.support.backends import TEST_REDIS_URL

BYOK = Hop(provider="openai", credential="byok:oa", model="gpt-4o-mini")
OTHER_MODEL = BYOK.model_copy(update={"model": "gpt-4o"})
OTHER_REGION = BYOK.model_copy(update={"region": "eu"})
SHARED = Hop(provider="simulated", credential="shared", model="echo")
CHAIN = [BYOK, OTHER_MODEL, OTHER_REGION, SHARED]


@pytest.fixture(params=["embedded"] + (["system"] if TEST_REDIS_URL else []))
def client(request: pytest.FixtureRequest) -> Iterator[redis.Redis]:
    url = (
        TEST_REDIS_URL
        if request.param == "system"
        else request.getfixturevalue("embedded_redis_url")
    )
    client = redis.Redis.from_url(str(url))
    yield client
    client.close()


@pytest.fixture
def cooldowns(client: redis.Redis) -> Cooldowns:
    return Cooldowns(client, f"t{uuid.uuid4().hex[:8]}")


@pytest.mark.parametrize(
    ("error_class", "retry_after_s", "expected"),
    [
        ("rate_limited", 20.0, 20.0),
        ("overloaded", 1.5, 1.5),
        ("rate_limited", None, None),
        ("rate_limited", 0.0, None),
        ("quota_exhausted", 20.0, None),
        ("provider_error", 20.0, None),
        ("rate_limited", 86_400.0, MAX_COOLDOWN_S),
    ],
)
def test_only_a_rate_limit_or_overload_with_a_retry_after_starts_a_capped_cooldown(
    error_class: str, retry_after_s: float | None, expected: float | None
) -> None:
    assert cooldown_s(error_class, retry_after_s) == expected


def test_nothing_is_cooling_until_a_hop_earns_a_cooldown(cooldowns: Cooldowns) -> None:
    assert cooldowns.read("ten_a", CHAIN) == [None] * len(CHAIN)


def test_a_429_with_retry_after_cools_that_hop_alone_until_its_reset(
    cooldowns: Cooldowns, client: redis.Redis
) -> None:
    before = utcnow()
    cooling = cooldowns.note("ten_a", CHAIN, 0, "rate_limited", 30.0)
    after = utcnow()
    until = cooling[0]
    assert until is not None
    assert before + timedelta(seconds=29) < until <= after + timedelta(seconds=30)
    # Another model or region of the same credential is another hop, with its own limits.
    assert cooling[1:] == [None, None, None]
    again, *others = cooldowns.read("ten_a", CHAIN)
    assert again is not None and abs(again - until) < timedelta(seconds=1)
    assert others == [None, None, None]
    ttl_ms = client.pttl(cooldowns.key("ten_a", BYOK))
    assert 28_000 < ttl_ms <= 30_000


def test_a_failure_that_earns_no_cooldown_only_reads(cooldowns: Cooldowns) -> None:
    assert cooldowns.note("ten_a", CHAIN, 0, "quota_exhausted", 30.0) == [None] * len(CHAIN)
    assert cooldowns.note("ten_a", CHAIN, 0, "rate_limited", None) == [None] * len(CHAIN)


def test_a_byok_hops_cooldown_is_its_tenants_alone(cooldowns: Cooldowns) -> None:
    cooldowns.note("ten_a", CHAIN, 0, "rate_limited", 30.0)
    assert cooldowns.read("ten_b", CHAIN)[0] is None


def test_a_shared_hops_cooldown_holds_for_every_tenant(cooldowns: Cooldowns) -> None:
    cooldowns.note("ten_a", CHAIN, 3, "overloaded", 30.0)
    assert cooldowns.read("ten_b", CHAIN)[3] is not None
    assert cooldowns.key("ten_a", SHARED) == cooldowns.key("ten_b", SHARED)


def test_an_absurd_retry_after_is_cut_to_an_hour(cooldowns: Cooldowns, client: redis.Redis) -> None:
    cooldowns.note("ten_a", CHAIN, 0, "rate_limited", 7 * 86_400.0)
    assert 3_590_000 < client.pttl(cooldowns.key("ten_a", BYOK)) <= 3_600_000


def test_the_latest_answer_replaces_the_cooldown(cooldowns: Cooldowns) -> None:
    first = cooldowns.note("ten_a", CHAIN, 0, "rate_limited", 600.0)[0]
    second = cooldowns.note("ten_a", CHAIN, 0, "rate_limited", 5.0)[0]
    assert first is not None and second is not None and second < first


def test_a_cooldown_ends_at_its_reset(cooldowns: Cooldowns) -> None:
    assert cooldowns.note("ten_a", CHAIN, 0, "rate_limited", 0.3)[0] is not None
    deadline = time.monotonic() + 10
    while cooldowns.read("ten_a", CHAIN)[0] is not None:
        assert time.monotonic() < deadline, "the cooldown never ended"
        time.sleep(0.05)


def test_an_empty_chain_reads_as_nothing(cooldowns: Cooldowns) -> None:
    assert cooldowns.read("ten_a", []) == []
