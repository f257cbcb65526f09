"""The built-in simulated provider, through the same interface as every adapter."""

import asyncio
import time

import pytest

from schemas.inference import InferenceRequest
from workers.providers.errors import ProviderError
from workers.providers.simulated import SimulatedAdapter


def _invoke(input: dict[str, object]) -> object:
    request = InferenceRequest(app="simulated/echo", model="echo", input=input)
    return asyncio.run(SimulatedAdapter().invoke(request, None))


def test_it_echoes_the_prompt_with_token_usage() -> None:
    result = _invoke(
        {"messages": [{"role": "user", "content": "one two"}], "prompt": "three four five"}
    )
    assert result.output == {"text": "three four five", "finish_reason": "stop", "model": "echo"}  # type: ignore[attr-defined]
    assert (result.usage.input_tokens, result.usage.output_tokens) == (5, 3)  # type: ignore[attr-defined]


def test_it_fails_with_the_status_it_is_told_and_its_retry_after() -> None:
    with pytest.raises(ProviderError) as failure:
        _invoke({"prompt": "x", "fail_with": 429, "retry_after_s": 2})
    assert (failure.value.error_class, failure.value.status_code, failure.value.retry_after_s) == (
        "rate_limited",
        429,
        2.0,
    )


def test_it_takes_the_latency_it_is_told() -> None:
    started = time.perf_counter()
    _invoke({"prompt": "x", "latency_ms": 120})
    assert time.perf_counter() - started >= 0.12


def test_an_input_with_nothing_to_say_is_an_invalid_request() -> None:
    with pytest.raises(ProviderError) as failure:
        _invoke({})
    assert failure.value.error_class == "invalid_request"


def test_an_input_of_the_wrong_shape_is_an_invalid_request_naming_the_field() -> None:
    """Not an adapter error, which would send the run down its chain for nothing."""
    with pytest.raises(ProviderError) as failure:
        _invoke({"prompt": 3})
    assert failure.value.error_class == "invalid_request"
    assert "prompt" in str(failure.value)
