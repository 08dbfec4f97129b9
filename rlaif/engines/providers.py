"""How a request is written for the server it goes to: vLLM's, the OpenAI API, or another one.

The engine interface (engines/base.py) says what to generate; this module says how each server
wants it said, so judge kinds and stages never ask which server runs their requests:

    vllm     vLLM's OpenAI-compatible server: the JSON schema as the kind wrote it (vLLM enforces
             its `maxLength` bounds while decoding), a regex through vLLM's `structured_outputs`
             extra, `max_tokens`, log-probs.
    openai   the OpenAI API: a strict schema in the Structured Outputs subset (every property
             required, `additionalProperties: false`, no length, size or numeric keywords), so free
             text is bounded by the instruction and the `max_tokens` room instead; no extras, so a
             format that has only a regex is read back by the tolerant parser; `max_completion_tokens`;
             top_logprobs at most 20 (5 on /completions). Reasoning models (o-series, gpt-5) get
             `max_completion_tokens` with room for their hidden reasoning and `reasoning_effort`, and
             no sampling knobs and no log-probs: their scores come from the sampled verdict.
    other    any other OpenAI-compatible server: the same portable requests as `openai`; a model is
             a reasoning model there only when the endpoint says so (`reasoning: true`).

`auto` asks the server's GET /models once per process (so once per run): vLLM's server reports
`owned_by: "vllm"`, the OpenAI API "system", "openai" or "openai-internal"; anything else is `other`.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from rlaif.engines.base import Request
from rlaif.engines.config import Endpoint

log = logging.getLogger(__name__)

# o1, o3, o3-mini, o4-mini, gpt-5, gpt-5-mini, ...; not gpt-5-chat-latest, a chat model
REASONING_MODEL = re.compile(r"^(o\d+|gpt-5)(?!.*-chat)", re.IGNORECASE)
OPENAI_OWNERS = {"system", "openai", "openai-internal"}
# what a strict schema may say; everything else (maxLength, minimum, pattern, default, ...) is left out
STRICT_KEYS = {"type", "properties", "required", "additionalProperties", "items", "enum", "const", "anyOf",
               "$defs", "$ref", "description", "title"}
_detected: dict[str, str] = {}  # base_url -> provider, for this process


@dataclass(frozen=True)
class Shape:
    """What a server takes: its provider, and for a reasoning model its budget and effort."""

    provider: str  # vllm | openai | other
    reasoning: bool = False
    reasoning_effort: str | None = None
    reasoning_tokens: int = 0  # room for hidden reasoning on top of the visible max_tokens

    @property
    def logprobs(self) -> bool:
        return not self.reasoning


def shape_for(provider: str, endpoint: Endpoint, model: str) -> Shape:
    reasoning = endpoint.reasoning
    if reasoning is None:
        reasoning = provider == "openai" and bool(REASONING_MODEL.match(model))
    if not reasoning:
        return Shape(provider)
    return Shape(provider, True, endpoint.reasoning_effort, endpoint.reasoning_tokens)


def provider_of(models: list[dict], base_url: str) -> str:
    """The provider a GET /models answer shows."""
    owners = {str(m.get("owned_by", "")) for m in models}
    if "vllm" in owners:
        return "vllm"
    if "api.openai.com" in base_url or owners & OPENAI_OWNERS:
        return "openai"
    return "other"


def detect(base_url: str, key: str, timeout: float) -> str:
    """`auto`: the provider behind `base_url`, asked once per process. Errors propagate (openai's)."""
    if base_url not in _detected:
        from openai import OpenAI

        with OpenAI(base_url=base_url, api_key=key, max_retries=2, timeout=timeout) as client:
            data = client.models.list().data
        if not isinstance(data, list):  # e.g. a server that answers every path with a chat completion
            raise ValueError(f"GET {base_url}/models answered without a model list: not an OpenAI-compatible "
                             "server, or set the endpoint's `provider`")
        models = [m.model_dump() for m in data]
        _detected[base_url] = provider_of(models, base_url)
        log.info("%s: provider %s", base_url, _detected[base_url])
    return _detected[base_url]


def strict_schema(schema: dict) -> dict:
    """The schema in OpenAI's strict subset: every object closed with all its properties required,
    and only the keywords the subset takes (bounds the server would refuse are dropped)."""

    def walk(node):
        if isinstance(node, list):
            return [walk(x) for x in node]
        if not isinstance(node, dict):
            return node
        out = {}
        for k, v in node.items():
            if k not in STRICT_KEYS:
                continue
            if k in ("properties", "$defs"):
                out[k] = {name: walk(sub) for name, sub in v.items()}
            elif k in ("items", "anyOf"):
                out[k] = walk(v)
            else:
                out[k] = v
        if out.get("type") == "object" or "properties" in out:
            out["properties"] = out.get("properties", {})
            out["required"] = list(out["properties"])
            out["additionalProperties"] = False
        return out

    return walk(schema)


def route(r: Request) -> str:
    """The API path a request goes to, relative to the base URL."""
    return "/chat/completions" if r.messages is not None else "/completions"


def body(r: Request, model: str, shape: Shape) -> dict:
    """The JSON body of one request as `shape`'s server takes it (a Batch API line's `body` too)."""
    s, chat = r.sampling, r.messages is not None
    out: dict = {"model": model, **({"messages": r.messages} if chat else {"prompt": r.prompt})}
    if shape.reasoning:
        out["max_completion_tokens"] = s.max_tokens + shape.reasoning_tokens
        if shape.reasoning_effort:
            out["reasoning_effort"] = shape.reasoning_effort
    else:
        out.update(temperature=s.temperature, top_p=s.top_p)
        out["max_completion_tokens" if chat and shape.provider == "openai" else "max_tokens"] = s.max_tokens
    out["seed"] = r.seed
    if r.stop:
        out["stop"] = list(r.stop)
    if r.logprobs and shape.logprobs:
        if chat:
            out.update(logprobs=True, top_logprobs=min(r.logprobs, 20))
        else:
            out["logprobs"] = r.logprobs if shape.provider == "vllm" else min(r.logprobs, 5)
    c = r.constraint
    if c is None:
        return out
    if shape.provider == "vllm":
        if c.regex:
            out["structured_outputs"] = {"regex": c.regex}
        elif c.json_schema is not None and chat:
            out["response_format"] = {"type": "json_schema", "json_schema": {
                "name": c.name, "schema": c.json_schema, "strict": True}}
        elif c.json_schema is not None:
            out["structured_outputs"] = {"json": c.json_schema}
    elif c.json_schema is not None and chat:
        out["response_format"] = {"type": "json_schema", "json_schema": {
            "name": c.name, "schema": strict_schema(c.json_schema), "strict": True}}
    return out  # a regex-only format elsewhere: the tolerant parser reads the text


def estimated_tokens(r: Request) -> int:
    """Input tokens by the chars/4 rule, plus the output room: what a rate limit counts a request as."""
    text = r.prompt if r.messages is None else "".join(str(m.get("content", "")) for m in r.messages)
    return len(text or "") // 4 + r.sampling.max_tokens
