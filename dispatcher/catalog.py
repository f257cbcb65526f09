"""The app catalog, read from a data file: app id -> {provider: provider-side model id}."""

import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path


@dataclass(frozen=True)
class Catalog:
    providers: frozenset[str]
    apps: dict[str, dict[str, str]]

    def has_app(self, app: str) -> bool:
        return app in self.apps

    def serving(self, app: str) -> dict[str, str]:
        """Providers that can serve ``app``, with their model id for it."""
        return self.apps.get(app, {})


def load_catalog(path: Path | None = None) -> Catalog:
    if path is None:
        text = resources.files("dispatcher").joinpath("data/catalog.toml").read_text()
    else:
        text = path.read_text()
    data = tomllib.loads(text)
    providers = frozenset(data.get("providers", {}))
    apps = {app: dict(models) for app, models in data.get("apps", {}).items()}
    for app, models in apps.items():
        unknown = set(models) - providers
        if unknown:
            raise ValueError(f"catalog: app {app!r} names unknown providers {sorted(unknown)}")
    return Catalog(providers=providers, apps=apps)
