"""Chain resolution: a pure function from the catalog and settings to the hops of a run."""

from dispatcher.catalog import Catalog
from schemas.hops import SHARED, Hop


class NoRoute(ValueError):
    """No provider can serve the app with what this tenant may use."""


def resolve_chain(app: str, catalog: Catalog, shared_providers: list[str]) -> list[Hop]:
    """The platform's shared compute for ``app``, in the order the settings list providers."""
    serving = catalog.serving(app)
    chain = [
        Hop(provider=provider, model=serving[provider], credential=SHARED)
        for provider in shared_providers
        if provider in serving
    ]
    if not chain:
        raise NoRoute(f"no provider is configured to serve app {app!r}")
    return chain
