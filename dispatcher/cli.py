"""The ``dispatcher`` command line.

It is the one place that knows both sides: it starts worker pools as processes by
module name (``python -m workers``), never by importing them.
"""

import json
import os
import sys
import time
from typing import Any

import click
import httpx

from dispatcher.settings import Settings


@click.group()
def main() -> None:
    """BYOK job dispatcher for AI inference."""


@main.command()
@click.option("--host", default=None, help="interface to bind (default: settings.host)")
@click.option("--port", type=int, default=None, help="port (default: PORT or 8000)")
def serve(host: str | None, port: int | None) -> None:
    """Serve the HTTP API."""
    import uvicorn

    from dispatcher import log
    from dispatcher.api.app import create_app
    from dispatcher.services import build_services

    settings = Settings()
    log.configure(settings.resolved_log_format, settings.log_level)
    app = create_app(build_services(settings, settings.locate_redis()))
    uvicorn.run(app, host=host or settings.host, port=port or settings.port, log_config=None)


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
    with Session(_engine()) as session:
        public = put_credential(session, keyring_for(Settings()), owner_id, name, secret)
        session.commit()
    click.echo(public.model_dump_json())


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


@main.command()
@click.argument("app")
@click.option("--input", "input_json", required=True, help="the run's input, as JSON")
@click.option("--url", default=None, help="API base URL (default: http://127.0.0.1:PORT)")
@click.option(
    "--api-key", envvar="DISPATCHER_API_KEY", default=None, help="default: var/dev-api-key"
)
@click.option("--wait/--no-wait", default=True, help="wait for the run to finish")
def submit(app: str, input_json: str, url: str | None, api_key: str | None, wait: bool) -> None:
    """Submit one run of APP and print it."""
    settings = Settings()
    base = url or f"http://{settings.host}:{settings.port}"
    headers = {"Authorization": f"Bearer {api_key or _dev_key(settings)}"}
    with httpx.Client(base_url=base, headers=headers, timeout=30) as client:
        accepted = _checked(
            client.post("/v1/run", json={"app": app, "input": json.loads(input_json)})
        )
        run = accepted
        while wait and run["status"] in ("queued", "running"):
            time.sleep(0.1)
            run = _checked(client.get(f"/v1/runs/{accepted['id']}"))
    click.echo(json.dumps(run, indent=2))


def _checked(response: httpx.Response) -> Any:
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
