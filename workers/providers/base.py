"""The one interface every provider adapter implements."""

from typing import Any, Protocol

from dispatcher.settings import Settings
from schemas.inference import InferenceRequest, InferenceResult


class Adapter(Protocol):
    """Turns a normalized request into one provider call, and its answer into a normalized result.

    ``invoke`` raises ``ProviderError`` for every failure. One adapter lives per worker
    process and keeps its HTTP clients open between calls; ``aclose`` closes them.
    """

    async def invoke(self, request: InferenceRequest, credential: Any) -> InferenceResult: ...

    async def aclose(self) -> None: ...


class AdapterFactory(Protocol):
    def __call__(self, settings: Settings) -> Adapter: ...
