"""The provider registry: one module per provider, listed here once.

A routing config may name only providers of the app catalog; a test checks that every
catalog provider has an adapter here and every adapter a catalog entry.
"""

from workers.providers.base import Adapter, AdapterFactory
from workers.providers.simulated import SimulatedAdapter

ADAPTERS: dict[str, AdapterFactory] = {
    "simulated": SimulatedAdapter,
}

__all__ = ["ADAPTERS", "Adapter", "AdapterFactory"]
