"""A worker pool: one process consuming the queues of the providers it is started for."""

import signal
import threading

import dramatiq
import structlog
from dramatiq.brokers.redis import RedisBroker

from dispatcher import log as logging_setup
from dispatcher.catalog import load_catalog
from dispatcher.changes import ChangeListener, ConfigChanges
from dispatcher.checkpoints import WalCheckpointer
from dispatcher.db import init_db, make_engine
from dispatcher.process import limit_arenas, settle_heap
from dispatcher.queue import make_broker, queue_name
from dispatcher.settings import Settings
from dispatcher.vault import keyring_for
from workers.actors import LogContext, declare_actors
from workers.credentials import Credentials
from workers.executor import HopExecutor
from workers.providers import ADAPTERS, adapter_factory
from workers.runtime import Runtime
from workers.sweeper import Housekeeper

log = structlog.get_logger(__name__)

DRAIN_TIMEOUT_S = 30.0


def check_providers(providers: list[str]) -> None:
    catalog = load_catalog()
    unknown = [p for p in providers if p not in ADAPTERS or p not in catalog.providers]
    if unknown or not providers:
        known = ", ".join(sorted(ADAPTERS))
        raise SystemExit(f"unknown provider(s) {unknown or '(none given)'}; known: {known}")


def run_pool(providers: list[str], settings: Settings) -> None:
    """Consume ``run.<provider>`` for each provider until SIGTERM or SIGINT."""
    check_providers(providers)
    limit_arenas()
    logging_setup.configure(settings.resolved_log_format, settings.log_level)
    engine = make_engine(settings.resolved_database_url)
    init_db(engine)
    broker = make_broker(settings, settings.locate_redis(), middleware=[LogContext()])
    runtime = Runtime(settings.max_in_flight, settings.store_threads)
    adapters = {provider: adapter_factory(provider)(settings) for provider in providers}
    credentials, changes, listener = keep_credentials(settings, broker)
    executor = HopExecutor(settings, engine, broker, runtime, adapters, credentials, changes)
    declare_actors(broker, executor, providers)
    worker = dramatiq.Worker(
        broker,
        queues={queue_name(provider) for provider in providers},
        worker_threads=settings.worker_threads,
        worker_timeout=settings.worker_poll_ms,
    )
    housekeeper = Housekeeper(settings, engine, broker, runtime.held)
    checkpoints = WalCheckpointer(engine)

    frozen = settle_heap()
    checkpoints.start()
    listener.start()
    runtime.start()
    executor.writer.start()
    worker.start()
    housekeeper.start()
    log.info(
        "worker pool started",
        providers=providers,
        max_in_flight=settings.max_in_flight,
        frozen_objects=frozen,
    )
    wait_for_signal()

    log.info("worker pool stopping", in_flight=runtime.in_flight)
    worker.stop()
    if not runtime.drain(DRAIN_TIMEOUT_S):
        log.warning(
            "stopped with calls in flight; their leases will lapse and be swept",
            in_flight=runtime.in_flight,
        )
    executor.writer.stop()
    housekeeper.stop()
    for adapter in adapters.values():
        runtime.call(adapter.aclose(), timeout=5)
    runtime.stop()
    listener.stop()
    checkpoints.stop()
    broker.close()
    engine.dispose()


def keep_credentials(
    settings: Settings, broker: RedisBroker
) -> tuple[Credentials, ConfigChanges, ChangeListener]:
    """The process's credentials, kept until their owner's configuration changes: the cache,
    the announcer of the changes this process makes (it drops its own entries at once), and
    the listener that drops the entries other processes announce changes to."""
    credentials = Credentials(keyring_for(settings), settings.config_cache_s)
    changes = ConfigChanges(broker.client, settings.redis_namespace)
    changes.local = [credentials.cache]
    listener = ChangeListener(broker.client, settings.redis_namespace, [credentials.cache])
    return credentials, changes, listener


def wait_for_signal() -> None:
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
