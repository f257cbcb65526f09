"""compose.yaml describes the real topology: no Docker engine runs here, so it is checked
as data against the command line and the provider registry."""

from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from dispatcher.catalog import load_catalog
from dispatcher.cli import main as cli
from workers.providers import ADAPTERS

COMPOSE = yaml.safe_load((Path(__file__).parent.parent / "compose.yaml").read_text())


def _resolve(args: list[str]) -> click.Command:
    """The CLI command ``args`` names (after ``dispatcher``), or a failure naming the bad word."""
    command: click.Command = cli
    ctx = click.Context(cli)
    words = list(args)
    while isinstance(command, click.Group) and words:
        name = words.pop(0)
        found = command.get_command(ctx, name)
        assert found is not None, f"`dispatcher {' '.join(args)}`: no command {name!r}"
        command = found
    command.make_context(command.name, words, parent=ctx)  # raises on unknown options
    return command


def _services() -> dict[str, Any]:
    return {
        name: spec
        for name, spec in COMPOSE["services"].items()
        if "command" in spec and spec["command"][0] == "dispatcher"
    }


def test_every_dispatcher_service_runs_a_real_cli_command() -> None:
    assert _services(), "compose.yaml starts no dispatcher service"
    for spec in _services().values():
        _resolve(spec["command"][1:])


def test_a_command_the_cli_does_not_have_is_caught() -> None:
    with pytest.raises(AssertionError, match="no command 'launch'"):
        _resolve(["launch", "simulated"])
    with pytest.raises(click.UsageError):
        _resolve(["serve", "--colour", "red"])


WEBHOOK_POOL = ["dispatcher", "worker", "--webhooks"]


def test_every_worker_service_names_registered_providers() -> None:
    catalog = load_catalog()
    for spec in _services().values():
        if spec["command"][1] == "worker" and spec["command"] != WEBHOOK_POOL:
            for provider in spec["command"][2:]:
                assert provider in ADAPTERS and provider in catalog.providers


def test_there_is_a_webhook_delivery_pool() -> None:
    assert WEBHOOK_POOL in [spec["command"] for spec in _services().values()]


def test_redis_keeps_an_append_only_file_and_never_evicts() -> None:
    command = COMPOSE["services"]["redis"]["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"


def test_there_is_an_api_postgres_and_a_simulated_pool() -> None:
    services = COMPOSE["services"]
    assert {"api", "postgres", "redis", "worker-simulated"} <= services.keys()
    assert services["api"]["command"][:2] == ["dispatcher", "serve"]


def test_every_provider_has_its_own_pool_service() -> None:
    pooled = {
        provider
        for spec in _services().values()
        if spec["command"][1] == "worker"
        for provider in spec["command"][2:]
    }
    assert pooled >= set(ADAPTERS)
