"""The provider registry: one module per provider, listed here once.

A routing config may name only providers of the app catalog; a test checks that every
catalog provider has an adapter here and every adapter a catalog entry.
"""

from workers.providers.anthropic import AnthropicAdapter
from workers.providers.azure_openai import AzureOpenAIAdapter
from workers.providers.base import Adapter, AdapterFactory
from workers.providers.bedrock import BedrockAdapter
from workers.providers.fal import FalAdapter
from workers.providers.gemini import GeminiAdapter
from workers.providers.openai import OpenAIAdapter
from workers.providers.simulated import SimulatedAdapter
from workers.providers.vertex import VertexAdapter

ADAPTERS: dict[str, AdapterFactory] = {
    "simulated": SimulatedAdapter,
    "openai": OpenAIAdapter,
    "azure_openai": AzureOpenAIAdapter,
    "anthropic": AnthropicAdapter,
    "gemini": GeminiAdapter,
    "vertex": VertexAdapter,
    "bedrock": BedrockAdapter,
    "fal": FalAdapter,
}

__all__ = ["ADAPTERS", "Adapter", "AdapterFactory"]
