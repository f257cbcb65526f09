"""``GET /metrics``: the dispatcher's figures in Prometheus's text format.

Not authenticated, like ``/healthz``: operators scrape it from inside their network, and it
carries queue depths and counts per provider, status and error class, never a tenant, a run
or a secret. Keep it off the public ingress.
"""

from fastapi import APIRouter
from fastapi.responses import Response

from dispatcher.api.deps import ServicesDep
from dispatcher.metrics import CONTENT_TYPE, collect
from dispatcher.queue import DELIVERY_QUEUE, queue_name

router = APIRouter(tags=["health"])


@router.get("/metrics", response_class=Response)
def metrics(services: ServicesDep) -> Response:
    """Every provider's queue (and the webhook queue), the workers' counters and the runs in
    progress. A plain ``def``: FastAPI runs it on its thread pool, off the event loop."""
    queues = [queue_name(p) for p in sorted(services.catalog.providers)] + [DELIVERY_QUEUE]
    text = collect(services.redis, services.engine, services.settings.redis_namespace, queues)
    return Response(text, media_type=CONTENT_TYPE)
