"""Any OpenAI-compatible endpoint as an engine: vLLM's own server, the OpenAI API, or another one.

Each request is written for the server it goes to (engines/providers.py: vLLM's extras, OpenAI's
strict schemas and reasoning-model rules). Requests run concurrently, at most `max_concurrency` at
once and within the endpoint's requests- and tokens-per-minute limits (engines/rate_limits.py).
HTTP 408/409/429/5xx, connection errors and timeouts are tried again with exponential backoff and
jitter, up to `max_retries` times; a 429's Retry-After pauses every request to the endpoint for as
long as it says (one that is neither seconds nor a date is ignored: the usual backoff). A 200 whose
body is not a completion (cut JSON, a proxy's HTML page, `choices: []`) is a transient failure of
that one request, tried again like a 503: the answers the call already has are kept. A reply with no
text (`content: null`: a content filter, or a reasoning model out of tokens) is that row's failure,
kept with `retryable=True` so the next run asks again (not asked again in this call: a filter
would answer the same). A row that still fails comes back with its error and `retryable=True`, is kept in
its shard, and is sent again on the next run. An error no retry can fix (400, 401, 403, 404, 422,
or a 429 for an exhausted quota: a wrong key, an unknown model, a request the server rejects, no
credit) stops the stage at the first one with the endpoint, model and server message: nothing is
written for it, so the next run after a fix sends it. The API key is read from the environment
variable the recipe names, never from the recipe, and never logged or stored, even when a server
quotes it back in an error (`redact`).

With `batch: true` the stage's requests go through the Batch API instead (engines/batch_api.py).
"""

from __future__ import annotations

import asyncio
import datetime
import email.utils
import json
import logging
import random
import time
from collections.abc import Sequence
from rlaif.core.errors import ConfigError, RlaifError
from rlaif.engines import providers
from rlaif.engines.base import Progress, Request, Result, TokenLogprobs
from rlaif.engines.config import Endpoint  # its home before engines/config.py: imported from here too
from rlaif.engines.rate_limits import RateLimiter

log = logging.getLogger(__name__)
MAX_WAIT = 60.0  # a longer Retry-After (a daily limit) is not waited out: the row is kept, sent next run


def check_endpoint(endpoint: Endpoint, models: list[str], timeout: float = 10.0) -> None:
    """Raise ConfigError unless the endpoint answers `GET /models` with its key and lists every
    model of `models`: a dead server, a wrong key or a misspelled model is found before a stage
    sends anything. A server that does not implement /models, or is busy (429/5xx), passes: the
    stage's own retries deal with a busy server."""
    import openai

    key = endpoint.api_key()  # an unset key variable: ConfigError here
    url = endpoint.base_url
    client = openai.OpenAI(base_url=url, api_key=key, max_retries=0, timeout=min(endpoint.timeout_s, timeout))
    hide = (lambda text: text.replace(key, "***")) if key != "EMPTY" else (lambda text: text)
    try:
        served = {m.id for m in client.models.list()}
    except (openai.AuthenticationError, openai.PermissionDeniedError) as e:
        whose = f"the key in ${endpoint.api_key_env}" if endpoint.api_key_env else "a request without a key (set api_key_env)"
        raise ConfigError(f"{url} rejected {whose}: HTTP {e.status_code}: {hide(status_message(e))}") from None
    except openai.NotFoundError:
        log.warning("%s has no /models: the models it serves are not checked", url)
        return
    except openai.APIStatusError as e:
        log.warning("%s/models answered HTTP %s: %s", url, e.status_code, hide(status_message(e)))
        return
    except (openai.APIConnectionError, openai.APITimeoutError) as e:
        reason = str(e.__cause__ or e).splitlines()[0] if (e.__cause__ or str(e)) else type(e).__name__
        raise ConfigError(f"endpoint {url} does not answer ({hide(reason)}); start the server or fix base_url") from None
    finally:
        client.close()
    for model in models:
        if model not in served:
            raise ConfigError(f"{url} does not serve model {model!r} (it serves: {', '.join(sorted(served)) or 'nothing'})")


class EndpointRefused(RlaifError):
    """The server rejected a request in a way no retry fixes: the stage stops here."""

    exit_code = 3


def chat_logprobs(logprobs: dict | None) -> TokenLogprobs | None:
    content = (logprobs or {}).get("content")
    if not content:
        return None
    return [(t["token"], [(c["token"], c["logprob"]) for c in (t.get("top_logprobs") or [])]
             or [(t["token"], t["logprob"])]) for t in content]


def text_logprobs(logprobs: dict | None) -> TokenLogprobs | None:
    tokens = (logprobs or {}).get("tokens")
    if not tokens:
        return None
    tops = logprobs.get("top_logprobs") or [None] * len(tokens)
    return [(t, sorted((top or {t: lp}).items(), key=lambda kv: -kv[1])) for t, lp, top in
            zip(tokens, logprobs["token_logprobs"], tops)]


def status_message(e) -> str:
    """The server's message of an HTTP error, without the client's "Error code: NNN - " prefix."""
    return e.message.removeprefix(f"Error code: {e.status_code} - ")


def redact(text: str, secret: str) -> str:
    """`text` without `secret`: some servers quote the key they were sent in their error bodies,
    and every message we keep (a failed row's error, a log line, the stage's error) passes here."""
    return text.replace(secret, "***") if secret and secret != "EMPTY" else text


class MalformedReply(Exception):
    """An HTTP 200 whose body is not a completion: a transient failure of that request (a proxy's
    error page, a reply cut short), never a refusal of the stage."""


def result_of(data) -> Result:
    """A Result from a chat or text completion's JSON (live, or a Batch API output line's body). Read
    as plain JSON: validating thousands of log-prob entries into the client's models costs more than
    the request. Raises MalformedReply for a body that is no completion; a completion without text
    (`content: null`) is a retryable failed row."""
    try:
        choice = data["choices"][0]
        message = choice.get("message")
        if message is not None:
            text, tokens = message.get("content"), chat_logprobs(choice.get("logprobs"))
        else:
            text, tokens = choice.get("text"), text_logprobs(choice.get("logprobs"))
        u = data.get("usage") or {}
        usage = dict(prompt_tokens=u.get("prompt_tokens") or 0, output_tokens=u.get("completion_tokens") or 0)
    except (KeyError, IndexError, TypeError, AttributeError, ValueError) as e:
        shown = json.dumps(data)[:120] if not isinstance(data, (bytes, str)) else str(data)[:120]
        raise MalformedReply(f"HTTP 200 without a completion ({type(e).__name__}: {e}): {shown}") from None
    reason = choice.get("finish_reason")
    if not text and reason == "length":
        log.warning("%s: no text within the token limit (a reasoning model may need more reasoning_tokens)",
                    data.get("model"))
    served = {k: str(data[f]) for k, f in (("model", "model"), ("fingerprint", "system_fingerprint")) if data.get(f)}
    if text is None:  # a content filter, a refusal, or no room left after reasoning: the next run asks again
        why = message.get("refusal") if isinstance(message, dict) and message.get("refusal") else f"finish_reason {reason}"
        return Result(error=f"the reply has no text ({why})", finish_reason=reason, retryable=True, served=served,
                      **usage)
    return Result(text=text, finish_reason=reason, tokens=tokens, served=served, **usage)


def parse_reply(raw: bytes) -> Result:
    """`result_of` of a live reply's bytes; a body that is not JSON is a MalformedReply too."""
    try:
        data = json.loads(raw)
    except ValueError:
        text = raw[:120].decode(errors="replace").replace("\n", " ")
        raise MalformedReply(f"HTTP 200 with a body that is not JSON: {text!r}") from None
    return result_of(data)


def retry_after(headers) -> float | None:
    """Seconds the server asks us to wait (Retry-After in ms, seconds, or an HTTP date)."""
    if not headers:
        return None
    for name, scale in (("retry-after-ms", 1000), ("retry-after", 1)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return max(float(value) / scale, 0.0)
        except ValueError:
            pass
        try:  # an HTTP date; anything else ("soon") is no instruction: the usual backoff
            when = email.utils.parsedate_to_datetime(value) if name == "retry-after" else None
        except (TypeError, ValueError, IndexError):
            when = None
        if when is not None:
            if when.tzinfo is None:
                when = when.replace(tzinfo=datetime.timezone.utc)
            return max(when.timestamp() - time.time(), 0.0)
    return None


def describe(e: Exception) -> tuple[str, bool, float | None]:
    """The error as one line, whether a later try may succeed, and the server's Retry-After."""
    import openai

    if isinstance(e, openai.APIStatusError):
        code = e.status_code
        message = status_message(e)
        quota = e.code == "insufficient_quota"  # a 429 that waiting does not fix
        retryable = (code in (408, 409, 429) or code >= 500) and not quota
        return f"HTTP {code}: {message}", retryable, retry_after(e.response.headers)
    if isinstance(e, (openai.APITimeoutError, openai.APIConnectionError)):
        return f"{type(e).__name__}: {e}", True, None
    if isinstance(e, MalformedReply):
        return str(e), True, None
    return f"{type(e).__name__}: {e}", False, None


def refused(endpoint: Endpoint, model: str, msg: str) -> EndpointRefused:
    hint = ""
    if msg.startswith(("HTTP 401", "HTTP 403")):
        hint = f" (the key comes from ${endpoint.api_key_env})" if endpoint.api_key_env else \
            " (no api_key_env set: sent no key)"
    return EndpointRefused(f"{endpoint.base_url} refused a request for model {model}: {msg}{hint}")


def backoff(attempt: int) -> float:
    """0.5 s, 1 s, 2 s, ... up to 8 s, less up to a quarter at random (as the openai client does)."""
    return min(0.5 * 2 ** attempt, 8.0) * (1 - 0.25 * random.random())


class EndpointEngine:
    """One model behind one OpenAI-compatible base URL."""

    def __init__(self, endpoint: Endpoint, model: str):
        self.endpoint, self.model = endpoint, model
        self.label = f"{model} @ {endpoint.base_url}"
        self._key = endpoint.api_key()  # a missing key variable fails here, before any request
        self._shape: providers.Shape | None = None
        self.limiter = RateLimiter(endpoint.requests_per_minute, endpoint.tokens_per_minute)

    @property
    def shape(self) -> providers.Shape:
        """How this server takes requests; `auto` asks GET /models (a wrong key stops here, before
        any paid request)."""
        if self._shape is None:
            e, provider = self.endpoint, self.endpoint.provider
            if provider == "auto":
                try:
                    provider = providers.detect(e.base_url, self._key, e.timeout_s)
                except Exception as exc:
                    msg, retryable, _ = describe(exc)
                    msg = redact(msg, self._key)
                    if not retryable:
                        raise refused(e, self.model, msg) from None
                    log.warning("%s: cannot ask GET /models (%s); sending portable requests", e.base_url, msg)
                    return providers.shape_for("other", e, self.model)  # not kept: asked again next call
            self._shape = providers.shape_for(provider, e, self.model)
        return self._shape

    def bodies(self, requests: Sequence[Request]) -> list[dict]:
        """Each request's JSON body as this server takes it (GET /models asked at most once here)."""
        shape = self.shape
        return [providers.body(r, self.model, shape) for r in requests]

    async def _send(self, client, r: Request, body: dict) -> Result:
        """One request, tried again on transient errors; raises EndpointRefused on the others."""
        e, path = self.endpoint, providers.route(r)
        tokens = providers.estimated_tokens(r)
        for attempt in range(e.max_retries + 1):
            await self.limiter.acquire(tokens)
            try:
                return parse_reply(await client.post(path, cast_to=bytes, body=body))
            except Exception as exc:  # a transient failure is kept as a row; any other stops the stage
                msg, retryable, wait = describe(exc)
                msg = redact(msg, self._key)
                if not retryable:
                    raise refused(e, self.model, msg) from None
                if attempt == e.max_retries:
                    log.warning("request %s failed after %d retries: %s", r.key, e.max_retries, msg)
                    return Result(error=msg, retryable=True)
                if wait is not None:  # everyone waits: the others would meet the same 429
                    wait = min(wait, MAX_WAIT)
                    self.limiter.pause(wait)
                await asyncio.sleep(wait if wait is not None else backoff(attempt))
        raise AssertionError("unreachable")

    async def _run(self, requests: Sequence[Request], progress: Progress | None) -> list[Result]:
        from openai import AsyncOpenAI

        e = self.endpoint
        bodies = self.bodies(requests)  # the shape first: a wrong key stops before any request
        client = AsyncOpenAI(base_url=e.base_url, api_key=self._key, max_retries=0, timeout=e.timeout_s)
        gate, stopped = asyncio.Semaphore(e.max_concurrency), []

        async def one(r: Request, body: dict) -> Result:
            async with gate:
                if stopped:  # a refusal came while this one waited: never sent
                    raise asyncio.CancelledError
                try:
                    result = await self._send(client, r, body)
                except EndpointRefused as exc:
                    stopped.append(True)  # before the gate lets the next request in
                    exc.request = r  # the stage's error names this request's member and row (core/errors.locate)
                    raise
            if progress:
                progress(1)
            return result

        try:  # a task group: the first refusal cancels the requests in flight
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(one(r, b)) for r, b in zip(requests, bodies)]
            return [t.result() for t in tasks]
        except ExceptionGroup as eg:
            raise eg.exceptions[0] from None
        finally:
            await client.close()

    def generate(self, requests: Sequence[Request], progress: Progress | None = None) -> list[Result]:
        if not requests:
            return []
        return asyncio.run(self._run(requests, progress))

    def close(self) -> None:
        pass
