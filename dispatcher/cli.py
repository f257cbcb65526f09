"""The ``dispatcher`` command line.

It is the one place that knows both sides: it starts worker pools as processes by
module name (``python -m workers``), never by importing them.
"""

import asyncio
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from dispatcher.settings import Settings

if TYPE_CHECKING:  # the API's process never needs an HTTP client: imported where used
    import httpx


@click.group()
def main() -> None:
    """BYOK job dispatcher for AI inference."""


@main.command()
@click.option("--host", default=None, help="interface to bind (default: settings.host)")
@click.option("--port", type=int, default=None, help="port (default: PORT or 8000)")
def serve(host: str | None, port: int | None) -> None:
    """Serve the HTTP API."""
    import structlog
    import uvicorn

    from dispatcher import log
    from dispatcher.api.app import create_app
    from dispatcher.process import limit_arenas, settle_heap
    from dispatcher.services import build_services

    limit_arenas()  # before any thread starts
    settings = Settings()
    log.configure(settings.resolved_log_format, settings.log_level)
    _check_vault_key(settings)
    app = create_app(build_services(settings, settings.locate_redis()))
    structlog.get_logger(__name__).info("API starting", frozen_objects=settle_heap())
    uvicorn.run(
        app,
        host=host or settings.host,
        port=port or settings.port,
        log_config=None,
        # Its lines are dropped anyway (dispatcher.log holds uvicorn.access at WARNING).
        access_log=False,
        # Beyond this many open connections (or requests in hand) the API answers 503 at
        # once instead of growing without bound.
        limit_concurrency=settings.api_max_connections,
    )


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("providers", nargs=-1, required=True)
def worker(providers: tuple[str, ...]) -> None:
    """Start a worker pool consuming the queues of PROVIDERS (e.g. `simulated`)."""
    os.execv(sys.executable, [sys.executable, "-m", "workers", *providers])  # noqa: S606


@main.command()
def dev() -> None:
    """Start everything on this machine: Redis, store, API, worker pools, a dev tenant."""
    from dispatcher import log
    from dispatcher.devserver import run_dev

    settings = Settings()
    log.configure(settings.resolved_log_format, settings.log_level)
    raise SystemExit(run_dev(settings))


@main.group()
def tenant() -> None:
    """Manage tenants."""


@tenant.command("create")
@click.argument("name")
def tenant_create(name: str) -> None:
    """Create tenant NAME and print its first API key (shown once)."""
    from dispatcher.tenancy import create_tenant_with_key

    tenant_id, key = create_tenant_with_key(_engine(), name)
    click.echo(json.dumps({"tenant_id": tenant_id, "api_key": key}))


@main.group()
def key() -> None:
    """Manage API keys."""


@key.command("create")
@click.argument("tenant_name")
@click.option("--name", default="", help="a label for the key")
def key_create(tenant_name: str, name: str) -> None:
    """Create another API key for TENANT_NAME and print it (shown once)."""
    from dispatcher.tenancy import create_key

    click.echo(create_key(_engine(), tenant_name, name))


@main.group()
def credential() -> None:
    """Store provider credentials in the vault (secrets are read, never printed)."""


_SECRET_HELP = "the secret as JSON without 'provider', e.g. '{\"api_key\": \"...\"}'; - reads stdin"  # noqa: S105


@credential.command("put-platform")
@click.argument("provider")
@click.option("--secret", required=True, help=_SECRET_HELP)
def credential_put_platform(provider: str, secret: str) -> None:
    """Register the platform's shared credential for PROVIDER (used by `shared` hops)."""
    from dispatcher.vault import PLATFORM_OWNER

    _put_credential(PLATFORM_OWNER, provider, provider, secret)


@credential.command("put")
@click.argument("tenant_name")
@click.argument("name")
@click.option("--provider", required=True, help="openai, azure_openai, anthropic, gemini, ...")
@click.option("--secret", required=True, help=_SECRET_HELP)
def credential_put(tenant_name: str, name: str, provider: str, secret: str) -> None:
    """Store credential NAME for tenant TENANT_NAME (used by `byok:NAME` hops)."""
    from sqlmodel import Session

    from dispatcher.store.tenants import tenant_by_name

    with Session(_engine()) as session:
        tenant = tenant_by_name(session, tenant_name)
    if tenant is None:
        raise click.ClickException(f"no tenant named {tenant_name!r}")
    _put_credential(tenant.id, name, provider, secret)


def _put_credential(owner_id: str, name: str, provider: str, secret_json: str) -> None:
    from pydantic import TypeAdapter, ValidationError
    from sqlmodel import Session

    from dispatcher.store.credentials import put_credential
    from dispatcher.vault import keyring_for
    from schemas.credentials import CredentialSecret

    raw = sys.stdin.read() if secret_json == "-" else secret_json  # noqa: S105
    try:
        secret = TypeAdapter(CredentialSecret).validate_python(
            json.loads(raw) | {"provider": provider}
        )
    except (ValueError, ValidationError) as exc:
        fields = [".".join(map(str, e["loc"])) for e in getattr(exc, "errors", lambda: [])()]
        raise click.ClickException(
            f"not a valid {provider} credential: {fields or 'bad JSON'}"
        ) from None
    settings = Settings()
    with Session(_engine()) as session:
        public = put_credential(session, keyring_for(settings), owner_id, name, secret)
        session.commit()
    _announce(settings, owner_id)
    click.echo(public.model_dump_json())


def _announce(settings: Settings, owner_id: str) -> None:
    """Tell running processes the owner's credentials changed (with no Redis running, their
    caches let the change in within ``config_cache_s``)."""
    import redis

    from dispatcher.changes import ConfigChanges

    try:
        url = settings.locate_redis()
    except RuntimeError:
        return
    client = redis.Redis.from_url(url)
    try:
        ConfigChanges(client, settings.redis_namespace).announce(owner_id)
    finally:
        client.close()


@main.group()
def vault() -> None:
    """Manage the vault's key-encryption keys."""


@vault.command("rotate")
def vault_rotate() -> None:
    """Re-wrap every data key under the active key (DISPATCHER_KEK_ACTIVE); safe while running."""
    from sqlmodel import Session

    from dispatcher.store.credentials import kek_ids_in_use, rotate
    from dispatcher.vault import keyring_for

    with Session(_engine()) as session:
        done = rotate(session, keyring_for(Settings()))
        session.commit()
        in_use = kek_ids_in_use(session)
    click.echo(
        json.dumps({"rotated": done.rotated, "unreadable": done.unreadable, "in_use": in_use})
    )
    if done.unreadable:
        raise SystemExit(1)


_URL_HELP = "API base URL (default: http://127.0.0.1:PORT)"
_KEY_HELP = "default: var/dev-api-key"


@main.command()
@click.argument("app")
@click.option("--input", "input_json", required=True, help="the run's input, as JSON")
@click.option("--url", default=None, help=_URL_HELP)
@click.option("--api-key", envvar="DISPATCHER_API_KEY", default=None, help=_KEY_HELP)
@click.option("--wait/--no-wait", default=True, help="wait for the run to finish")
def submit(app: str, input_json: str, url: str | None, api_key: str | None, wait: bool) -> None:
    """Submit one run of APP and print it."""
    import httpx

    base, key = _target(url, api_key)
    prefer = {"Prefer": "wait=30"} if wait else {}
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=base, headers=headers, timeout=60) as client:
        body = {"app": app, "input": json.loads(input_json)}
        run = _checked(client.post("/v1/run", json=body, headers=prefer))
        while wait and run["status"] in ("queued", "running"):
            run = _checked(client.get(f"/v1/runs/{run['id']}", headers=prefer))
    click.echo(json.dumps(run, indent=2))


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--out",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="results JSONL, one line per input line (default: FILE.results.jsonl); "
    "run again with the same file to resume",
)
@click.option("--concurrency", "-c", type=click.IntRange(1, 1000), default=32, show_default=True)
@click.option("--url", default=None, help=_URL_HELP)
@click.option("--api-key", envvar="DISPATCHER_API_KEY", default=None, help=_KEY_HELP)
def batch(
    file: Path, out: Path | None, concurrency: int, url: str | None, api_key: str | None
) -> None:
    """Run each line of FILE (a POST /v1/run body per line), wait for them, write the results
    in input order, and print a summary. Progress goes to stderr."""
    from dispatcher.batch import BatchError, BatchOptions, run_batch

    base, key = _target(url, api_key)
    output = out or file.with_name(file.stem + ".results.jsonl")
    options = BatchOptions(file, output, base, key, concurrency=concurrency)
    try:
        summary = asyncio.run(run_batch(options))
    except BatchError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(summary.render(output))


@main.group("webhook-secret")
def webhook_secret() -> None:
    """Manage tenants' webhook signing secrets (a new one is printed once)."""


@webhook_secret.command("create")
@click.argument("tenant_name")
def webhook_secret_create(tenant_name: str) -> None:
    """Create a signing secret for TENANT_NAME; the others in use keep signing."""
    from dispatcher.store.webhooks import create_secret

    click.echo(_with_tenant(tenant_name, create_secret).model_dump_json())


@webhook_secret.command("rotate")
@click.argument("tenant_name")
@click.option(
    "--expire-others-after",
    type=click.FloatRange(0, 30 * 86_400),
    default=86_400,
    show_default=True,
    help="seconds the secrets in use keep signing beside the new one",
)
def webhook_secret_rotate(tenant_name: str, expire_others_after: float) -> None:
    """Create a new secret for TENANT_NAME and expire the others after a grace period."""
    from dispatcher.store.webhooks import rotate_secrets

    def rotate(session: Any, keyring: Any, tenant_id: str) -> Any:
        return rotate_secrets(session, keyring, tenant_id, expire_others_after)

    click.echo(_with_tenant(tenant_name, rotate).model_dump_json())


@webhook_secret.command("list")
@click.argument("tenant_name")
def webhook_secret_list(tenant_name: str) -> None:
    """The secrets that sign for TENANT_NAME now (ids and fingerprints, not the secrets)."""
    from dispatcher.store.webhooks import list_secrets

    listed = _with_tenant(
        tenant_name, lambda session, _, tenant_id: list_secrets(session, tenant_id)
    )
    click.echo(json.dumps([item.model_dump(mode="json") for item in listed]))


def _with_tenant(tenant_name: str, action: Callable[[Any, Any, str], Any]) -> Any:
    """``action(session, keyring, tenant_id)`` for the tenant named, committed."""
    from sqlmodel import Session

    from dispatcher.store.tenants import tenant_by_name
    from dispatcher.vault import keyring_for

    with Session(_engine()) as session:
        tenant = tenant_by_name(session, tenant_name)
        if tenant is None:
            raise click.ClickException(f"no tenant named {tenant_name!r}")
        done = action(session, keyring_for(Settings()), tenant.id)
        session.commit()
    return done


def _target(url: str | None, api_key: str | None) -> tuple[str, str]:
    """The API's base URL and the key to call it with."""
    settings = Settings()
    return url or f"http://{settings.host}:{settings.port}", api_key or _dev_key(settings)


def _check_vault_key(settings: Settings) -> None:
    """Refuse to start on a missing or placeholder key-encryption key, before anything else."""
    from dispatcher.vault import VaultError, keyring_for

    try:
        keyring_for(settings)
    except VaultError as exc:
        raise click.ClickException(str(exc)) from None


def _checked(response: "httpx.Response") -> Any:
    if response.is_error:
        raise click.ClickException(f"{response.status_code}: {response.text}")
    return response.json()


def _dev_key(settings: Settings) -> str:
    path = settings.var_dir / "dev-api-key"
    if not path.exists():
        raise click.ClickException(
            "no --api-key given and no var/dev-api-key (start `dispatcher dev`)"
        )
    return path.read_text().strip()


def _engine() -> Any:
    from dispatcher.db import init_db, make_engine

    engine = make_engine(Settings().resolved_database_url)
    init_db(engine)
    return engine
