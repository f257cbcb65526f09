"""The provider registry: one module per provider, listed here once.

A routing config may name only providers of the app catalog; a test checks that every
catalog provider has an adapter here and every adapter a catalog entry.

An adapter's module is imported when a pool asks for it (``adapter_factory``): a pool serves a
few providers, and the others' libraries (botocore's signer, google-auth's service accounts)
would only take its memory.
"""

from importlib import import_module

from workers.providers.base import Adapter, AdapterFactory

#: provider -> (module under ``workers.providers``, adapter class)
ADAPTERS: dict[str, tuple[str, str]] = {
    "simulated": ("simulated", "SimulatedAdapter"),
    "openai": ("openai", "OpenAIAdapter"),
    "azure_openai": ("azure_openai", "AzureOpenAIAdapter"),
    "anthropic": ("anthropic", "AnthropicAdapter"),
    "gemini": ("gemini", "GeminiAdapter"),
    "vertex": ("vertex", "VertexAdapter"),
    "bedrock": ("bedrock", "BedrockAdapter"),
    "fal": ("fal", "FalAdapter"),
}


def adapter_factory(provider: str) -> AdapterFactory:
    """The adapter class of ``provider`` (a key of ``ADAPTERS``), its module imported now."""
    module, name = ADAPTERS[provider]
    factory: AdapterFactory = getattr(import_module(f"{__name__}.{module}"), name)
    return factory


__all__ = ["ADAPTERS", "Adapter", "AdapterFactory", "adapter_factory"]
