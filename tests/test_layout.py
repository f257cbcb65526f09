"""The architecture's rules, checked: imports run workers -> dispatcher -> schemas, and the
catalog and the adapter registry name the same providers."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from dispatcher.catalog import load_catalog
from workers.providers import ADAPTERS, adapter_factory

ROOT = Path(__file__).parent.parent


def _imported_packages(package: str) -> set[tuple[str, str]]:
    found = set()
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            else:
                continue
            found |= {(str(path.relative_to(ROOT)), name.split(".")[0]) for name in names}
    return found


@pytest.mark.parametrize(
    ("package", "forbidden"), [("schemas", {"dispatcher", "workers"}), ("dispatcher", {"workers"})]
)
def test_imports_run_one_way(package: str, forbidden: set[str]) -> None:
    offenders = sorted(
        f"{path} imports {top}" for path, top in _imported_packages(package) if top in forbidden
    )
    assert offenders == []


def test_the_catalog_and_the_adapter_registry_agree() -> None:
    assert load_catalog().providers == set(ADAPTERS)
    for provider in ADAPTERS:
        factory = adapter_factory(provider)
        assert callable(factory.invoke) and callable(factory.aclose)  # type: ignore[attr-defined]


def test_a_pool_imports_only_the_adapters_it_serves() -> None:
    """A pool for one provider does not carry the others' libraries in its memory."""
    script = (
        "import sys, workers.pool; from workers.providers import adapter_factory;"
        "adapter_factory('openai');"
        "print(sorted(m for m in ('botocore', 'google.oauth2', 'fastapi') if m in sys.modules))"
    )
    found = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert found.stdout.strip() == "[]"


def test_every_catalog_app_is_served_by_known_providers() -> None:
    catalog = load_catalog()
    for app, models in catalog.apps.items():
        assert models, app
        assert set(models) <= catalog.providers
