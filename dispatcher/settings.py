"""Settings: the one place that reads the environment.

Everything else receives a ``Settings`` (or the values it needs) as an argument.
"""

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


def _env(name: str) -> AliasChoices:
    """Accept both ``DISPATCHER_<NAME>`` and, for the well-known ones, the bare name."""
    return AliasChoices(f"DISPATCHER_{name}", name)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="DISPATCHER_", extra="ignore", populate_by_name=True
    )

    environment: Literal["development", "test", "production"] = "development"
    var_dir: Path = Path("var")
    database_url: str | None = Field(default=None, validation_alias=_env("DATABASE_URL"))
    redis_url: str | None = Field(default=None, validation_alias=_env("REDIS_URL"))
    host: str = "127.0.0.1"
    port: int = Field(default=8000, validation_alias=_env("PORT"))

    log_format: Literal["console", "json"] | None = None
    log_level: str = "INFO"

    #: Prefix of every Redis key the dispatcher and its queues write.
    redis_namespace: str = "dispatcher"
    #: The worker processes `dispatcher dev` starts: each entry is one process, consuming the
    #: queue of one provider or of several joined by commas (an idle pool costs next to nothing).
    pools: list[str] = ["simulated", "openai,azure_openai,anthropic,gemini,vertex,bedrock,fal"]
    #: Providers whose shared compute serves ``shared`` hops.
    shared_providers: list[str] = ["simulated"]

    #: Hosts a tenant-supplied endpoint (OpenAI ``base_url``, Azure ``endpoint``) may name;
    #: ``*.`` matches one or more leading labels. Tests add their loopback fakes here.
    provider_hosts: list[str] = [
        "api.openai.com",
        "*.openai.azure.com",
        "api.anthropic.com",
        "generativelanguage.googleapis.com",
        "aiplatform.googleapis.com",
        "*.aiplatform.googleapis.com",
        "*.amazonaws.com",
        "queue.fal.run",
    ]
    #: Hosts a service-account JSON's ``token_uri`` may name.
    token_hosts: list[str] = ["oauth2.googleapis.com"]
    #: Provider -> base URL, replacing the provider's public one (private endpoints; test fakes).
    provider_endpoints: dict[str, str] = {}

    #: Key-encryption keys of the credential vault, ``<id>:<base64 of 32 random bytes>[,...]``.
    #: Required outside development (placeholders are refused); in development a key is
    #: generated once under ``var/``.
    kek: SecretStr | None = None
    #: Which key of ``kek`` wraps new data keys; may be unset when ``kek`` holds one key.
    kek_active: str | None = None

    #: Let webhooks reach private and loopback addresses (tests' local receivers only).
    webhook_allow_private: bool = False
    webhook_timeout_s: float = 15.0

    #: How long after submitting a fal job its first status poll comes (each next one 1.5x later).
    fal_first_poll_s: float = 2.0

    max_body_bytes: int = 1024 * 1024
    api_key_cache_s: float = 30.0
    #: The API keeps each tenant's routing config and healthy credentials in process, a worker
    #: the credentials it called with (decrypted); a change announced on Redis
    #: (dispatcher.changes) drops them at once, and this bounds how long a missed one lives.
    config_cache_s: float = 30.0
    #: The most runs the API writes in one transaction and one Redis round trip (group commit).
    submit_batch_max: int = 1000
    #: Threads the API runs blocking work on (store reads, sync endpoints).
    api_threads: int = 8
    #: Connections the API holds open at once; beyond them it answers 503.
    api_max_connections: int = 1000

    # Worker pools.
    #: dramatiq threads per pool process. They only hand messages to the process's one store
    #: writer and wait for their claim, so more threads make bigger claim batches, not more CPU.
    worker_threads: int = 32
    #: The longest an idle consumer waits before looking at its queue again. A new message
    #: wakes it at once (dispatcher.doorbell), so this bounds only unannounced arrivals
    #: (messages dramatiq redelivers from a dead worker) and the idle cost.
    worker_poll_ms: int = 1000
    #: Provider calls one worker process holds in flight at once.
    max_in_flight: int = 1000
    #: Threads for the store work that is not a claim or an outcome (parking a provider's job,
    #: webhook deliveries), per worker process; claims and outcomes go through one writer.
    store_threads: int = 4
    #: A claimed run's lease; renewed while its worker lives, swept when it lapses.
    lease_s: float = 30.0
    lease_renew_s: float = 10.0
    sweep_interval_s: float = 5.0
    #: A queued run untouched this long gets its message sent again (a lost enqueue).
    requeue_after_s: float = 600.0
    #: A worker silent this long is dead; its unacknowledged messages are redelivered.
    heartbeat_timeout_ms: int = 15_000
    #: Out of a million broker commands, how many run queue maintenance.
    maintenance_chance: int = 20_000

    @property
    def development(self) -> bool:
        return self.environment != "production"

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.var_dir / 'dispatcher.db'}"

    @property
    def resolved_log_format(self) -> str:
        return self.log_format or ("console" if self.development else "json")

    @property
    def embedded_redis_dir(self) -> Path:
        return self.var_dir / "redis"

    def locate_redis(self) -> str:
        """``REDIS_URL``, else the embedded Redis that ``dispatcher dev`` runs under ``var/``."""
        if self.redis_url:
            return self.redis_url
        socket = self.embedded_redis_dir / "redis.sock"
        if socket.exists():
            return f"unix://{socket.resolve()}"
        raise RuntimeError(
            "no Redis: set REDIS_URL, or start `dispatcher dev` (it runs an embedded one)"
        )
