"""The normalized inference request and result every provider adapter speaks."""

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Usage(BaseModel):
    """Usage of one attempt, normalized across providers; ``raw`` keeps the provider's block."""

    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    units: float = 0
    raw: dict[str, Any] | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str
    content: Any


class ChatInput(BaseModel):
    """The OpenAI chat shape, with ``prompt`` as a shorthand for one user message."""

    model_config = ConfigDict(extra="allow")

    messages: list[ChatMessage] = Field(default_factory=list)
    prompt: str | None = None
    system: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    stop: list[str] | None = None

    def conversation(self) -> list[ChatMessage]:
        """The messages to send: ``messages``, then ``prompt`` as a final user turn."""
        turns = list(self.messages)
        if self.prompt is not None:
            turns.append(ChatMessage(role="user", content=self.prompt))
        return turns


class InferenceRequest(BaseModel):
    """One hop's call: the app, the provider-side model id and the job's input."""

    app: str
    model: str
    input: dict[str, Any]
    region: str | None = None
    timeout_s: float = 60.0


class InferenceResult(BaseModel):
    output: dict[str, Any]
    usage: Usage = Field(default_factory=Usage)
