"""Adapter tests: each adapter against its fake provider over real loopback HTTP.

Helpers: ``call`` runs one ``invoke`` on a fresh adapter (built, used and closed inside one
event loop), ``failure`` returns the ``ProviderError`` it raises, ``loopback`` makes settings
that point a provider at a fake and allow-list loopback, ``counts`` and ``summary`` flatten a
usage and an error for one comparison.
"""

import asyncio
from typing import Any

import pytest

from dispatcher.settings import Settings
from schemas.inference import InferenceRequest, InferenceResult, Usage
from workers.providers.base import AdapterFactory
from workers.providers.errors import ProviderError


def loopback(**endpoints: str) -> Settings:
    return Settings(provider_endpoints=endpoints, provider_hosts=["127.0.0.1"])


def chat(model: str, timeout_s: float = 5.0, **input: Any) -> InferenceRequest:
    """A request for ``model``; without ``messages``, ``input`` has the prompt "hello"."""
    if "messages" not in input:
        input.setdefault("prompt", "hello")
    return InferenceRequest(app="test/app", model=model, input=input, timeout_s=timeout_s)


def call(
    factory: AdapterFactory, settings: Settings, request: InferenceRequest, credential: Any
) -> InferenceResult:
    async def run() -> InferenceResult:
        adapter = factory(settings)
        try:
            return await adapter.invoke(request, credential)
        finally:
            await adapter.aclose()

    return asyncio.run(run())


def failure(
    factory: AdapterFactory, settings: Settings, request: InferenceRequest, credential: Any
) -> ProviderError:
    with pytest.raises(ProviderError) as raised:
        call(factory, settings, request, credential)
    return raised.value


def counts(usage: Usage) -> tuple[int, int, int, int, int]:
    """(input, output, cached input, cache write, reasoning) tokens."""
    return (
        usage.input_tokens,
        usage.output_tokens,
        usage.cached_input_tokens,
        usage.cache_write_tokens,
        usage.reasoning_tokens,
    )


def summary(error: ProviderError) -> tuple[str, int | None, float | None]:
    return error.error_class, error.status_code, error.retry_after_s


def assert_secret_kept(error: ProviderError, secret: str) -> None:
    assert secret not in error.message
    assert secret[:8] not in error.message
    assert secret not in str(error)
