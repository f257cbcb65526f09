"""The built-in provider: no network, shaped by its input.

``input.latency_ms`` is how long it takes; ``input.fail_with`` a status it answers with
instead (429, 503, 529, 500, 401, 400, ...), with ``input.retry_after_s``.
It is the shared compute of a development install.
"""

import asyncio
from typing import Any

from dispatcher.settings import Settings
from schemas.inference import InferenceRequest, InferenceResult, Usage
from workers.providers.errors import ProviderError, class_for_status
from workers.providers.http import chat_input


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return str(content)


class SimulatedAdapter:
    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings

    async def invoke(self, request: InferenceRequest, credential: Any) -> InferenceResult:
        shape = request.input
        latency_ms = float(shape.get("latency_ms", 0) or 0)
        if latency_ms > 0:
            await asyncio.sleep(latency_ms / 1000)
        if shape.get("fail_with"):
            self._fail(int(shape["fail_with"]), shape.get("retry_after_s"))
        turns = chat_input(request).conversation()
        prompt = _text(turns[-1].content)
        words_in = sum(len(_text(turn.content).split()) for turn in turns)
        words_out = len(prompt.split())
        return InferenceResult(
            output={"text": prompt, "finish_reason": "stop", "model": request.model},
            usage=Usage(
                input_tokens=words_in,
                output_tokens=words_out,
                raw={"prompt_words": words_in, "completion_words": words_out},
            ),
        )

    def _fail(self, status: int, retry_after_s: Any) -> None:
        raise ProviderError(
            class_for_status(status),
            f"simulated failure with status {status}",
            status_code=status,
            retry_after_s=float(retry_after_s) if retry_after_s is not None else None,
        )

    async def aclose(self) -> None:
        return None
