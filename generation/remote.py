"""Any OpenAI-compatible endpoint as an engine: vLLM's own server, or a hosted API.

Requests run concurrently with a bounded number in flight. HTTP 408/409/429/5xx, connection errors
and timeouts are retried by the `openai` client itself, with exponential backoff and jitter
(`max_retries`). A row that still fails becomes a `Completion` with its error and `retryable=True`:
it is shown in the summary, kept in its shard, and generated again on the next run. The API key is
read from the environment variable the recipe names, never from the recipe, and never logged.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time

from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger(__name__)


class Endpoint(BaseModel):
    """A generator's or judge's `endpoint:` block in a recipe."""

    model_config = ConfigDict(extra="forbid")

    base_url: str  # e.g. http://127.0.0.1:8000/v1
    api_key_env: str | None = None  # name of the environment variable holding the key
    max_concurrency: int = Field(8, ge=1)
    max_retries: int = Field(4, ge=0)
    timeout_s: float = Field(120.0, gt=0)

    def api_key(self) -> str:
        if not self.api_key_env:
            return "EMPTY"  # vLLM's server accepts any key unless started with --api-key
        key = os.environ.get(self.api_key_env)
        if not key:
            raise RuntimeError(f"environment variable {self.api_key_env} (the endpoint's api_key_env) is not set")
        return key


class RemoteResult(BaseModel):
    text: str | None = None
    finish_reason: str | None = None
    prompt_tokens: int = 0
    output_tokens: int = 0
    error: str | None = None
    retryable: bool = False
    # per generated token: (text, [(candidate text, logprob), ...]), when the request asked for them
    logprobs: list[tuple[str, list[tuple[str, float]]]] | None = None


def _chat_logprobs(choice) -> list[tuple[str, list[tuple[str, float]]]] | None:
    content = getattr(choice.logprobs, "content", None) if choice.logprobs else None
    if not content:
        return None
    return [(t.token, [(c.token, c.logprob) for c in (t.top_logprobs or [])] or [(t.token, t.logprob)])
            for t in content]


def _describe(e: Exception) -> tuple[str, bool]:
    import openai

    if isinstance(e, openai.APIStatusError):
        code = e.status_code
        return f"HTTP {code}: {e.message}", code in (408, 409, 429) or code >= 500
    if isinstance(e, (openai.APITimeoutError, openai.APIConnectionError)):
        return f"{type(e).__name__}: {e}", True
    return f"{type(e).__name__}: {e}", False


async def _run_all(endpoint: Endpoint, model: str, requests: list[dict], progress) -> list[RemoteResult]:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=endpoint.base_url, api_key=endpoint.api_key(),
                         max_retries=endpoint.max_retries, timeout=endpoint.timeout_s)
    gate = asyncio.Semaphore(endpoint.max_concurrency)

    async def one(req: dict) -> RemoteResult:
        async with gate:
            try:
                if "messages" in req:
                    r = await client.chat.completions.create(model=model, **req)
                    choice, text = r.choices[0], r.choices[0].message.content
                    logprobs = _chat_logprobs(choice)
                else:
                    r = await client.completions.create(model=model, **req)
                    choice, text, logprobs = r.choices[0], r.choices[0].text, None
                usage = r.usage
                result = RemoteResult(text=text, finish_reason=choice.finish_reason, logprobs=logprobs,
                                      prompt_tokens=usage.prompt_tokens if usage else 0,
                                      output_tokens=usage.completion_tokens if usage else 0)
            except Exception as e:  # kept as a failed row, never dropped
                msg, retryable = _describe(e)
                log.warning("request failed after retries: %s", msg)
                result = RemoteResult(error=msg, retryable=retryable)
            progress(result)
            return result

    try:
        return await asyncio.gather(*(one(r) for r in requests))
    finally:
        await client.close()


def run_requests(endpoint: Endpoint, model: str, requests: list[dict], desc: str = "") -> list[RemoteResult]:
    """Send every request (chat: {"messages": ...}, text: {"prompt": ...}) and return results in order."""
    from tqdm import tqdm

    bar = tqdm(total=len(requests), desc=desc or model, unit="req")
    tokens, start = [0], time.perf_counter()

    def progress(r: RemoteResult) -> None:
        tokens[0] += r.output_tokens
        bar.set_postfix_str(f"{tokens[0] / max(time.perf_counter() - start, 1e-9):.1f} tok/s")
        bar.update(1)

    try:
        return asyncio.run(_run_all(endpoint, model, requests, progress))
    finally:
        bar.close()
