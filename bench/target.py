"""Which app the benchmark's runs go to, and how each one tells the provider its latency.

``openai`` (the default): app ``openai/gpt-4o-mini`` on the platform's shared OpenAI
credential, whose base URL is the fake (``DISPATCHER_PROVIDER_ENDPOINTS``), so every run is
an HTTP call through the real OpenAI adapter; the latency rides in the prompt text.
``simulated``: app ``simulated/echo``, the built-in provider, which sleeps ``input.latency_ms``
in the worker without any network (no provider-side figures: in-flight comes from the store).
"""

import json
from dataclasses import dataclass
from typing import Any

from bench.fake_provider import latency_prompt

BENCH_KEY = "sk-bench-0123456789abcdef"


@dataclass(frozen=True)
class Target:
    name: str
    app: str
    pool: str
    #: Whether runs reach the fake over HTTP (then it counts their calls).
    through_fake: bool

    def run_body(self, latency_ms: float) -> dict[str, Any]:
        """The ``POST /v1/run`` body of one run whose provider call takes ``latency_ms``."""
        text = latency_prompt(latency_ms)
        if self.through_fake:
            return {"app": self.app, "input": {"prompt": text, "max_tokens": 16}}
        return {"app": self.app, "input": {"prompt": text, "latency_ms": latency_ms}}

    def env(self, fake_url: str) -> dict[str, str]:
        """Settings that route the app's shared hops to this target."""
        env = {"DISPATCHER_SHARED_PROVIDERS": json.dumps([self.pool])}
        if self.through_fake:
            env["DISPATCHER_PROVIDER_ENDPOINTS"] = json.dumps({self.pool: fake_url})
        return env

    def platform_secret(self) -> str | None:
        """The shared credential to register for the pool, as the CLI takes it."""
        return json.dumps({"api_key": BENCH_KEY}) if self.through_fake else None


OPENAI = Target("openai", "openai/gpt-4o-mini", "openai", through_fake=True)
SIMULATED = Target("simulated", "simulated/echo", "simulated", through_fake=False)
TARGETS = {target.name: target for target in (OPENAI, SIMULATED)}


def direct_body(latency_ms: float) -> dict[str, Any]:
    """What the OpenAI adapter sends for ``OPENAI.run_body(latency_ms)``: the direct call."""
    return {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": latency_prompt(latency_ms)}],
        "max_completion_tokens": 16,
    }


def openai_available() -> bool:
    """Whether this checkout can route ``openai/gpt-4o-mini`` to shared OpenAI compute."""
    try:
        from dispatcher.catalog import load_catalog
        from dispatcher.cli import main
        from workers.providers import ADAPTERS
    except ImportError:
        return False
    credential = getattr(main, "commands", {}).get("credential")
    has_cli = credential is not None and "put-platform" in getattr(credential, "commands", {})
    return has_cli and "openai" in ADAPTERS and load_catalog().has_app(OPENAI.app)


def choose(name: str) -> Target:
    """``auto``: openai when available, else simulated."""
    if name == "auto":
        return OPENAI if openai_available() else SIMULATED
    return TARGETS[name]
