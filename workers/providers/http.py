"""Shared plumbing for the HTTP provider adapters: one client, errors translated once, JSON read.

An adapter subclasses ``HttpAdapter`` (it keeps ``self.settings`` and one ``self.client``, built
once per worker process and closed by ``aclose``) and calls providers through ``request_json``::

    class ExampleAdapter(HttpAdapter):
        async def invoke(self, request, credential) -> InferenceResult:
            key = credential_as(credential, ExampleCredential).api_key.get_secret_value()
            body = await request_json(
                self.client, "POST", url, headers={...}, json={...},
                timeout_s=request.timeout_s, on_error=error_for, secrets=[key],
            )
            return InferenceResult(output={"text": dig(body, "choices", 0, "text")}, ...)

    def error_for(response: httpx.Response) -> ProviderError:  # the adapter's ONE mapping
        return error_from(response, class_for_status(response.status_code), dig(...))

Failures, translated here once::

    httpx.TimeoutException                 -> ProviderError("timeout")
    httpx.TransportError (connect, ...)    -> ProviderError("connection_error")
    other httpx.HTTPError (decoding, ...)  -> ProviderError("provider_error")
    a 4xx/5xx answer                       -> on_error(response), the adapter's mapping
    a 2xx answer that is not a JSON object -> ProviderError("provider_error")
    every message                          -> scrubbed of the secrets (from their 8-char prefixes)

Public names:

- ``HttpAdapter(settings)``: base class holding ``settings`` and ``client``; ``aclose()``.
- ``new_client(verify=None)``: one ``ProviderClient`` (``workers.providers.client``: no
  connection cap, no retries, no redirects, no cookies, no proxies or CA files from the
  environment: ``Settings`` is the one place that reads it), trusting ``verify``.
- ``tls_context()``: the process's shared default TLS context.
- ``request_json(client, method, url, ...)``: send one call, return its JSON object.
- ``transport_errors(secrets)``: context manager translating httpx exceptions.
- ``error_from(response, error_class, message)``: a ``ProviderError`` with status and retry delay.
- ``retry_after_s(response)``: seconds to wait, from every place providers put it.
- ``google_details(body, kind)``: the ``google.rpc`` details of one kind in a Google error body.
- ``json_body(response)``, ``json_object(content)``, ``dig(data, *path)``, ``int_at(data, *path)``,
  ``joined_text(parts, keep)``: read JSON answers.
- ``scrub(text, secrets)``: the text with each secret, and its first 8 characters on, masked.
- ``require_allowed(url, patterns)``: refuse a tenant-supplied URL off the host allow-list.
- ``credential_as(credential, kind)``: the credential as its typed model.
- ``chat_input(request)``, ``system_and_turns(chat)``, ``text_of(content)``: the chat input.
"""

import json
import re
import ssl
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from functools import cache
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ValidationError

from dispatcher.hosts import url_allowed
from dispatcher.jsontext import dumps_bytes, loads
from dispatcher.settings import Settings
from schemas.errors import ErrorClass
from schemas.inference import ChatInput, ChatMessage, InferenceRequest, Usage
from workers.providers.client import ProviderClient
from workers.providers.errors import ProviderError, parse_retry_after

#: How long an idle provider connection is kept for the next call.
KEEPALIVE_S = 30.0
ErrorMapper = Callable[[httpx.Response], ProviderError]
Model = TypeVar("Model", bound=BaseModel)

_MASK = "[redacted]"
#: What may follow a masked prefix and still be the key: the characters keys are made of.
_REST_OF_KEY = r"[A-Za-z0-9_-]*"
_SYSTEM_ROLES = frozenset({"system", "developer"})


class HttpAdapter:
    """The state every HTTP adapter keeps: its settings and one client, closed by ``aclose``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.client = new_client()

    async def aclose(self) -> None:
        await self.client.aclose()


def new_client(verify: ssl.SSLContext | None = None) -> ProviderClient:
    """The one client of an adapter (``workers.providers.client``), trusting ``verify`` (the
    process's default TLS context when None)."""
    return ProviderClient(verify=verify or tls_context(), keepalive_s=KEEPALIVE_S)


@cache
def tls_context() -> ssl.SSLContext:
    """The default TLS context (certifi's CAs), built once per process: building one costs
    a few hundred milliseconds, and clients may share it."""
    return httpx.create_ssl_context(trust_env=False)


async def request_json(
    client: ProviderClient,
    method: str,
    url: str,
    *,
    on_error: ErrorMapper,
    secrets: Iterable[str] = (),
    timeout_s: float = 60.0,
    headers: dict[str, str] | None = None,
    json: Any = None,
    content: bytes | None = None,
) -> dict[str, Any]:
    """One call (``json``, encoded here, or ``content`` as its body): its JSON object, or a
    scrubbed ``ProviderError``."""
    secrets = list(secrets)
    if json is not None:  # orjson: several times faster than the standard encoder, same bytes
        content = dumps_bytes(json)
        headers = dict(headers or {})
        if not any(name.lower() == "content-type" for name in headers):
            headers["content-type"] = "application/json"
    with transport_errors(secrets):
        answer = await client.call(
            method, url, headers=headers, content=content, timeout_s=timeout_s
        )
    if answer.is_error:
        raise scrubbed(on_error(answer.response()), secrets)
    body = json_object(answer.content)
    if not body:
        raise ProviderError(
            "provider_error", "the answer carries no JSON object", status_code=answer.status
        )
    return body


@contextmanager
def transport_errors(secrets: Iterable[str] = ()) -> Iterator[None]:
    """Translate httpx's exceptions: ``timeout``, ``connection_error``, else (an undecodable
    answer, ...) ``provider_error``. The httpx exception is not chained: its text may hold a
    secret, and the scrubbed message already names it."""
    try:
        yield
    except httpx.TimeoutException as exc:
        raise _transport_error("timeout", exc, secrets) from None
    except httpx.TransportError as exc:
        raise _transport_error("connection_error", exc, secrets) from None
    except httpx.HTTPError as exc:
        raise _transport_error("provider_error", exc, secrets) from None


def _transport_error(
    error_class: ErrorClass, exc: Exception, secrets: Iterable[str]
) -> ProviderError:
    detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return ProviderError(error_class, scrub(detail, secrets))


def error_from(response: httpx.Response, error_class: ErrorClass, message: Any) -> ProviderError:
    """A ``ProviderError`` with the answer's status code and retry delay."""
    text = str(message) if message else f"HTTP {response.status_code}"
    return ProviderError(
        error_class,
        text,
        status_code=response.status_code,
        retry_after_s=retry_after_s(response),
    )


def scrubbed(error: ProviderError, secrets: Iterable[str]) -> ProviderError:
    """The same error with its message scrubbed of the secrets."""
    return ProviderError(
        error.error_class,
        scrub(error.message, secrets),
        status_code=error.status_code,
        retry_after_s=error.retry_after_s,
    )


def scrub(text: str, secrets: Iterable[str]) -> str:
    """Mask each secret, then its first 8 characters with whatever key characters follow them
    (providers echo keys whole or truncated). Each secret is looked for as written and as
    escaped in a repr or in JSON: an HTTP library quotes an illegal header value as bytes."""
    forms = [form for secret in secrets for form in _written_forms(secret)]
    for form in forms:
        text = text.replace(form, _MASK)
    for form in forms:
        if len(form) > 8:
            text = re.sub(re.escape(form[:8]) + _REST_OF_KEY, _MASK, text)
    return text


def _written_forms(secret: str) -> list[str]:
    """``secret`` as written, stripped, and escaped as ``repr``, ``bytes`` repr and JSON do."""
    forms = [
        secret,
        secret.strip(),
        repr(secret)[1:-1],
        repr(secret.encode(errors="backslashreplace"))[2:-1],
        json.dumps(secret)[1:-1],
    ]
    return [form for form in dict.fromkeys(forms) if form]


def retry_after_s(response: httpx.Response) -> float | None:
    """``retry-after-ms``, ``x-ms-retry-after-ms``, ``retry-after`` (seconds or HTTP date),
    else Google's ``RetryInfo.retryDelay`` in the error body."""
    headers = response.headers
    for name in ("retry-after-ms", "x-ms-retry-after-ms"):
        milliseconds = _number(headers.get(name))
        if milliseconds is not None:
            return milliseconds / 1000
    seconds = parse_retry_after(headers.get("retry-after"))
    if seconds is not None:
        return seconds
    return _retry_info_s(json_body(response))


def _number(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


def _retry_info_s(body: dict[str, Any]) -> float | None:
    for detail in google_details(body, "RetryInfo"):
        delay = detail.get("retryDelay")
        if isinstance(delay, str) and re.fullmatch(r"\d+(\.\d+)?s", delay):
            return float(delay[:-1])
    return None


def google_details(body: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    """The ``error.details`` entries of type ``type.googleapis.com/google.rpc.<kind>``."""
    details = dig(body, "error", "details")
    if not isinstance(details, list):
        return []
    suffix = f"google.rpc.{kind}"
    return [d for d in details if isinstance(d, dict) and str(d.get("@type", "")).endswith(suffix)]


def json_body(response: httpx.Response) -> dict[str, Any]:
    """The answer's JSON object; ``{}`` when it is none (a list is read as its first item)."""
    return json_object(response.content)


def json_object(content: bytes) -> dict[str, Any]:
    """``json_body`` of an answer's bytes."""
    try:
        body = loads(content)
    except ValueError:
        return {}
    if isinstance(body, list) and body:
        body = body[0]
    return body if isinstance(body, dict) else {}


def dig(data: Any, *path: str | int) -> Any:
    """``data[p0][p1]...`` through dicts and lists; None where the path breaks."""
    for key in path:
        if isinstance(key, str) and isinstance(data, dict):
            data = data.get(key)
        elif isinstance(key, int) and isinstance(data, list) and -len(data) <= key < len(data):
            data = data[key]
        else:
            return None
    return data


def int_at(data: Any, *path: str | int) -> int:
    """A token count at ``path``; 0 when absent or not a number."""
    value = dig(data, *path)
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


def require_allowed(url: str, patterns: list[str]) -> str:
    """``url`` without a trailing slash, or ``invalid_request`` when it may not be called."""
    if not url_allowed(url, patterns):
        host = urlsplit(url).hostname or "(none)"
        raise ProviderError(
            "invalid_request",
            f"endpoint host {host!r} is not allowed: it must be https and on the "
            "allow-list of provider hosts",
        )
    return url.rstrip("/")


def credential_as(credential: Any, kind: type[Model]) -> Model:
    """The credential as ``kind`` (given as the model or a dict), else ``auth_failed``."""
    if isinstance(credential, kind):
        return credential
    if isinstance(credential, dict):
        try:
            return kind.model_validate(credential)
        except ValidationError:
            pass  # its text may quote the secret: say only which shape was expected
    raise ProviderError("auth_failed", f"this provider needs a valid {kind.__name__}")


def chat_input(request: InferenceRequest) -> ChatInput:
    """The job input in the chat shape, with at least one turn, else ``invalid_request``."""
    try:
        chat = ChatInput.model_validate(request.input)
    except ValidationError as exc:
        fields = ", ".join(".".join(map(str, e["loc"])) for e in exc.errors())
        raise ProviderError("invalid_request", f"invalid chat input: {fields}") from None
    if not chat.conversation():
        raise ProviderError("invalid_request", "input needs 'prompt' or 'messages'")
    return chat


def system_and_turns(chat: ChatInput) -> tuple[str | None, list[ChatMessage]]:
    """The system prompt (``system`` and system/developer messages) apart from the turns."""
    turns = chat.conversation()
    system = [chat.system] if chat.system else []
    system += [text_of(turn.content) for turn in turns if turn.role in _SYSTEM_ROLES]
    rest = [turn for turn in turns if turn.role not in _SYSTEM_ROLES]
    return ("\n\n".join(system) or None), rest


def joined_text(parts: Any, keep: Callable[[dict[str, Any]], bool] = bool) -> str:
    """The ``text`` of each part (a dict in the list ``parts``) that ``keep`` accepts, joined:
    Anthropic's content blocks, Google's parts, Bedrock's content."""
    items = parts if isinstance(parts, list) else []
    return "".join(str(p.get("text", "")) for p in items if isinstance(p, dict) and keep(p))


def text_of(content: Any) -> str:
    """A message's text: a string, or the text parts of an OpenAI content list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return joined_text(content)
    return "" if content is None else str(content)


def usage_with_cache(
    usage: Any, input: str, output: str, cache_read: str, cache_write: str
) -> Usage:
    """Usage of providers that count cache reads and writes apart from input tokens (Anthropic,
    Bedrock): normalized input includes both, as providers.md's table says."""
    read, written = int_at(usage, cache_read), int_at(usage, cache_write)
    return Usage(
        input_tokens=int_at(usage, input) + read + written,
        output_tokens=int_at(usage, output),
        cached_input_tokens=read,
        cache_write_tokens=written,
        raw=usage if isinstance(usage, dict) else None,
    )
