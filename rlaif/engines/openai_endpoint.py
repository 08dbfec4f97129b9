"""Any OpenAI-compatible endpoint as an engine: vLLM's own server, or a hosted API.

Requests run concurrently with a bounded number in flight. HTTP 408/409/429/5xx, connection errors
and timeouts are retried by the `openai` client itself, with exponential backoff and jitter
(`max_retries`); a row that still fails comes back with its error and `retryable=True`, is kept in
its shard, and is sent again on the next run. An error no retry can fix (400, 401, 403, 404: a
wrong key, an unknown model, a request the server rejects) stops the stage at the first one with
the endpoint, model and server message: nothing is written for it, so the next run after a fix
sends it. The API key is read from the environment variable the recipe names, never from the
recipe, and never logged.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field

from rlaif.core.errors import ConfigError, RlaifError
from rlaif.engines.base import Progress, Request, Result, TokenLogprobs

log = logging.getLogger(__name__)


class Endpoint(BaseModel):
    """A generator's or judge's `endpoint:` block in a recipe."""

    model_config = ConfigDict(extra="forbid")

    base_url: str  # e.g. http://127.0.0.1:8000/v1
    base_urls: list[str] = Field(default_factory=list)  # more servers of the same model: balanced (engines/balanced.py)
    api_key_env: str | None = None  # name of the environment variable holding the key
    max_concurrency: int = Field(8, ge=1)
    max_retries: int = Field(4, ge=0)
    timeout_s: float = Field(120.0, gt=0)

    def api_key(self) -> str:
        if not self.api_key_env:
            return "EMPTY"  # vLLM's server accepts any key unless started with --api-key
        key = os.environ.get(self.api_key_env)
        if not key:
            raise ConfigError(f"environment variable {self.api_key_env} (the endpoint's api_key_env for "
                              f"{self.base_url}) is not set")
        return key


class EndpointRefused(RlaifError):
    """The server rejected a request in a way no retry fixes: the stage stops here."""

    exit_code = 3


def chat_logprobs(choice) -> TokenLogprobs | None:
    content = getattr(choice.logprobs, "content", None) if choice.logprobs else None
    if not content:
        return None
    return [(t.token, [(c.token, c.logprob) for c in (t.top_logprobs or [])] or [(t.token, t.logprob)])
            for t in content]


def text_logprobs(choice) -> TokenLogprobs | None:
    lp = getattr(choice, "logprobs", None)
    if not lp or not getattr(lp, "tokens", None):
        return None
    tops = lp.top_logprobs or [None] * len(lp.tokens)
    return [(t, sorted((top or {t: l}).items(), key=lambda kv: -kv[1])) for t, l, top in
            zip(lp.tokens, lp.token_logprobs, tops)]


def describe(e: Exception) -> tuple[str, bool]:
    """The error as one line, and whether a later try may succeed."""
    import openai

    if isinstance(e, openai.APIStatusError):
        code = e.status_code
        return f"HTTP {code}: {e.message}", code in (408, 409, 429) or code >= 500
    if isinstance(e, (openai.APITimeoutError, openai.APIConnectionError)):
        return f"{type(e).__name__}: {e}", True
    return f"{type(e).__name__}: {e}", False


def request_body(r: Request) -> dict:
    """The JSON body of one request (without `model`), for /chat/completions or /completions."""
    s = r.sampling
    body: dict = dict(temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens, seed=r.seed)
    if r.stop:
        body["stop"] = list(r.stop)
    if r.messages is not None:
        body["messages"] = r.messages
        if r.logprobs:
            body.update(logprobs=True, top_logprobs=r.logprobs)
        if r.constraint and r.constraint.json_schema:
            body["response_format"] = {"type": "json_schema", "json_schema": {
                "name": r.constraint.name, "schema": r.constraint.json_schema, "strict": True}}
    else:
        body["prompt"] = r.prompt
        if r.logprobs:
            body["logprobs"] = r.logprobs
    if r.constraint and r.constraint.regex:  # vLLM's server extension
        body["extra_body"] = {"structured_outputs": {"regex": r.constraint.regex}}
    return body


class EndpointEngine:
    """One model behind one OpenAI-compatible base URL."""

    def __init__(self, endpoint: Endpoint, model: str):
        self.endpoint, self.model = endpoint, model
        self.label = f"{model} @ {endpoint.base_url}"
        self._key = endpoint.api_key()  # a missing key variable fails here, before any request

    async def _run(self, requests: Sequence[Request], progress: Progress | None) -> list[Result]:
        from openai import AsyncOpenAI

        e = self.endpoint
        client = AsyncOpenAI(base_url=e.base_url, api_key=self._key, max_retries=e.max_retries, timeout=e.timeout_s)
        gate = asyncio.Semaphore(e.max_concurrency)

        async def one(r: Request) -> Result:
            async with gate:
                body = request_body(r)
                try:
                    if r.messages is not None:
                        resp = await client.chat.completions.create(model=self.model, **body)
                        choice = resp.choices[0]
                        text, tokens = choice.message.content, chat_logprobs(choice)
                    else:
                        resp = await client.completions.create(model=self.model, **body)
                        choice = resp.choices[0]
                        text, tokens = choice.text, text_logprobs(choice)
                    u = resp.usage
                    result = Result(text=text, finish_reason=choice.finish_reason, tokens=tokens,
                                    prompt_tokens=u.prompt_tokens if u else 0, output_tokens=u.completion_tokens if u else 0)
                except Exception as exc:  # a transient failure is kept as a row; any other stops the stage
                    msg, retryable = describe(exc)
                    if not retryable:
                        raise EndpointRefused(f"{e.base_url} refused a request for model {self.model}: {msg}") from None
                    log.warning("request %s failed after %d retries: %s", r.key, e.max_retries, msg)
                    result = Result(error=msg, retryable=True)
            if progress:
                progress(1)
            return result

        try:
            return list(await asyncio.gather(*(one(r) for r in requests)))
        finally:
            await client.close()

    def generate(self, requests: Sequence[Request], progress: Progress | None = None) -> list[Result]:
        if not requests:
            return []
        return asyncio.run(self._run(requests, progress))

    def close(self) -> None:
        pass
