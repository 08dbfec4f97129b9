"""Answers to /chat/completions and /completions: the rules a model holds a request to (chat or
completion model, reasoning model), the responder's text cut at stop strings and the token limit, and
log-probs from a stand-in tokenizer."""

from __future__ import annotations

import hashlib
import json
import math
import re
import secrets
import time
from typing import NamedTuple

from rlaif.rehearsal.openai_server.rules import (
    CHAT_FIELDS, COMPLETION_FIELDS, ApiError, bad, check_fields, check_messages, check_ranges,
    check_response_format)

TOKEN_RE = re.compile(r"\s*\w+|\s*[^\w\s]|\s+")
FILLERS = (" the", ",", ".", " a", "\n", " and", " of", " to", " is", " in", "-", " it", " that", " for", " on",
           " with", " as", " was", " this", " be", " or")


class Reply(NamedTuple):
    """A responder's answer with the tokens it is made of (they join to `text`): usage and log-probs
    count these instead of the stand-in tokenizer's. Sent as it is, cut only at the token limit."""

    text: str
    tokens: list[str]


def tokenize(text: str) -> list[str]:
    """A stand-in tokenizer: words and digit runs (with their leading space), single punctuation marks."""
    return TOKEN_RE.findall(text or "")


def unit(*parts) -> float:
    """A deterministic number in [0, 1) from the parts."""
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64


# --- answers ----------------------------------------------------------------------------------------

def resolve(schema: dict, root: dict) -> dict:
    while isinstance(schema, dict) and "$ref" in schema:
        node = root
        for part in schema["$ref"].lstrip("#/").split("/"):
            node = node[part] if part else node
        schema = node
    return schema


def sample(schema: dict, root: dict, seed, path: str = ""):
    """A value that satisfies `schema` (the strict subset), chosen deterministically from `seed`."""
    schema = resolve(schema, root)
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return schema["enum"][int(unit(seed, path) * len(schema["enum"]))]
    if "anyOf" in schema:
        return sample(schema["anyOf"][0], root, seed, path)
    types = schema.get("type") if isinstance(schema.get("type"), list) else [schema.get("type")]
    kind = next((t for t in types if t != "null"), "null")
    if kind == "object":
        return {k: sample(v, root, seed, f"{path}.{k}") for k, v in (schema.get("properties") or {}).items()}
    if kind == "array":
        return [sample(schema.get("items", {}), root, seed, f"{path}[{i}]") for i in range(schema.get("minItems", 1))]
    if kind in ("integer", "number"):
        lo, hi = schema.get("minimum", 0), schema.get("maximum", 5)
        return lo + int(unit(seed, path) * (hi - lo + 1)) if kind == "integer" else float(lo)
    if kind == "boolean":
        return unit(seed, path) < 0.5
    if kind == "string":
        return {"date-time": "2024-01-01T00:00:00Z", "date": "2024-01-01", "time": "00:00:00", "duration": "P1D",
                "email": "a@example.com", "hostname": "example.com", "ipv4": "127.0.0.1", "ipv6": "::1",
                "uuid": "00000000-0000-4000-8000-000000000000"}.get(schema.get("format"), "short answer")
    return None


def default_responder(body: dict) -> str:
    """A schema-satisfying JSON document for json_schema requests, else a short text that differs by prompt."""
    seed = body.get("messages") or body.get("prompt")
    rf = body.get("response_format") or {}
    if rf.get("type") == "json_schema":  # the same verdict for the same messages, whatever the sampling
        schema = rf["json_schema"].get("schema") or {}
        return json.dumps(sample(schema, schema, seed))
    tag = hashlib.sha256(json.dumps([seed, body.get("seed"), body.get("temperature"), body.get("model")]).encode())
    if rf.get("type") == "json_object":
        return json.dumps({"answer": f"reply {tag.hexdigest()[:6]}"})
    return f"Reply {tag.hexdigest()[:6]}: a short answer from the test server."


def enum_sets(schema) -> list[list[str]]:
    """Every enum of the schema, as the strings their values are written as."""
    found = []
    if isinstance(schema, dict):
        if isinstance(schema.get("enum"), list):
            found.append([v if isinstance(v, str) else json.dumps(v) for v in schema["enum"]])
        for v in schema.values():
            found += enum_sets(v)
    elif isinstance(schema, list):
        for v in schema:
            found += enum_sets(v)
    return found


def token_logprobs(tokens: list[str], k: int, enums: list[list[str]], seed) -> list[tuple[str, float, list]]:
    """Per token: its logprob and the k most likely tokens (itself first). At an enum value the others of
    its enum follow with the mass the chosen one leaves, so a judge can read a rating distribution."""
    out = []
    for i, tok in enumerate(tokens):
        core = tok.strip()
        enum = next((e for e in enums if core in e), None) if core else None
        if enum:
            p = 0.55 + 0.4 * unit(seed, i)
            others = [tok.replace(core, e, 1) for e in enum if e != core]
            weights = [0.5 ** (j + 1) for j in range(len(others))]
            alts = [(t, (1 - p) * 0.95 * w / sum(weights)) for t, w in zip(others, weights)]
        else:
            p, alts = 0.9 + 0.099 * unit(seed, i), []
        rest = (1 - p - sum(q for _, q in alts)) or 1e-9
        used = {tok} | {t for t, _ in alts}
        fillers = [f for f in FILLERS if f not in used][: max(k - 1 - len(alts), 0)]
        alts += [(f, rest * 0.5 ** (j + 1)) for j, f in enumerate(fillers)]
        tops = [(tok, math.log(p))] + [(t, math.log(q)) for t, q in alts]
        out.append((tok, math.log(p), tops[:k]))
    return out


def entry(tok: str, lp: float) -> dict:
    return {"token": tok, "logprob": lp, "bytes": list(tok.encode())}


class Chat:
    """The inference endpoints of `OpenAIServer` (a mixin)."""

    def _logprobs(self, toks: list[str], k: int, enums: list[list[str]], seed) -> list[tuple[str, float, list]]:
        if self.certain:  # every token sampled with probability 1: a verdict scores exactly its rating
            return [(t, 0.0, [(t, 0.0)]) for t in toks]
        return token_logprobs(toks, k, enums, seed)

    def answer(self, path: str, body: dict) -> tuple[int, dict]:
        """(status, JSON body) of one /chat/completions or /completions request; used by batches too."""
        try:
            return 200, (self._chat(body) if path.endswith("chat/completions") else self._complete(body))
        except ApiError as e:
            return e.status, e.body

    def _check_model(self, body: dict) -> str:
        model = body.get("model")
        if not model:
            raise bad("you must provide a model parameter")
        if model not in self.models:
            raise ApiError(404, f"The model `{model}` does not exist or you do not have access to it.",
                           code="model_not_found")
        return model

    def _chat(self, body: dict) -> dict:
        if self.rules.known_fields:
            check_fields(body, CHAT_FIELDS)
        model = self._check_model(body)
        if self.rules.model_endpoints and model in self.completion_models:
            raise ApiError(404, "This is not a chat model and thus not supported in the v1/chat/completions "
                                "endpoint. Did you mean to use v1/completions?", param="model")
        check_messages(body)
        check_ranges(body)
        reasoning = model in self.reasoning_models
        if reasoning:
            self._check_reasoning(model, body)
        elif "reasoning_effort" in body and self.rules.known_fields:
            raise bad("Unsupported parameter: 'reasoning_effort' is not supported with this model.",
                      "reasoning_effort", "unsupported_parameter")
        if body.get("logprobs") not in (None, True, False):
            raise bad("Invalid type for 'logprobs': expected a boolean, but got a value instead.", "logprobs",
                      "invalid_type")
        if body.get("top_logprobs") is not None and not body.get("logprobs"):
            raise bad("Invalid value for 'top_logprobs': 'logprobs' must be set to true when 'top_logprobs' is used.",
                      "top_logprobs", "invalid_value")
        if body.get("stream"):
            raise bad("This test server does not stream; send 'stream': false.", "stream")
        check_response_format(body, self.rules.strict_schemas)
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        hidden = self.reasoning_tokens if reasoning else 0
        k = body.get("top_logprobs") or 0 if body.get("logprobs") else None
        schema = ((body.get("response_format") or {}).get("json_schema") or {}).get("schema")
        choices, used = [], 0
        for i in range(body.get("n") or 1):
            text, finish, toks = self._generate(body, limit, hidden)
            used += len(toks)
            choice = {"index": i, "message": {"role": "assistant", "content": text, "refusal": None,
                                              "annotations": []}, "logprobs": None, "finish_reason": finish}
            if k is not None:
                lps = self._logprobs(toks, k, enum_sets(schema), [body.get("messages"), i])
                choice["logprobs"] = {"content": [{**entry(t, lp), "top_logprobs": [entry(a, b) for a, b in tops]}
                                                  for t, lp, tops in lps], "refusal": None}
            choices.append(choice)
        prompt = sum(len(tokenize(json.dumps(m.get("content")))) + 4 for m in body["messages"])
        completion = used + hidden * len(choices)
        return {"id": "chatcmpl-" + secrets.token_hex(12), "object": "chat.completion", "created": int(time.time()),
                "model": self.snapshots.get(model, model), "choices": choices, "service_tier": "default",
                "system_fingerprint": self.fingerprint,
                "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                          "total_tokens": prompt + completion,
                          "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                          "completion_tokens_details": {"reasoning_tokens": hidden * len(choices), "audio_tokens": 0,
                                                        "accepted_prediction_tokens": 0,
                                                        "rejected_prediction_tokens": 0}}}

    def _check_reasoning(self, model: str, body: dict) -> None:
        if "max_tokens" in body:
            raise bad("Unsupported parameter: 'max_tokens' is not supported with this model. Use "
                      "'max_completion_tokens' instead.", "max_tokens", "unsupported_parameter")
        for name, default in (("temperature", 1), ("top_p", 1)):
            if body.get(name) is not None and body[name] != default:
                raise bad(f"Unsupported value: '{name}' does not support {body[name]} with this model. Only the "
                          f"default ({default}) value is supported.", name, "unsupported_value")
        for name in ("presence_penalty", "frequency_penalty", "logit_bias"):
            if body.get(name):
                raise bad(f"Unsupported parameter: '{name}' is not supported with this model.", name,
                          "unsupported_parameter")
        if body.get("logprobs") or body.get("top_logprobs") is not None:
            raise ApiError(403, "You are not allowed to request logprobs from this model")
        efforts = ("minimal", "low", "medium", "high") if model.startswith("gpt-5") else ("low", "medium", "high")
        effort = body.get("reasoning_effort")
        if effort is not None and effort not in efforts:
            raise bad(f"Unsupported value: 'reasoning_effort' does not support '{effort}' with this model. Supported "
                      f"values are: {', '.join(repr(e) for e in efforts[:-1])}, and '{efforts[-1]}'.",
                      "reasoning_effort", "unsupported_value")

    def _generate(self, body: dict, limit: int | None, hidden: int) -> tuple[str, str, list[str]]:
        """The responder's text cut at a stop string and at the token limit (hidden reasoning counts)."""
        text = self.responder(body)
        if isinstance(text, Reply):
            text, toks = text
        else:
            stops = body.get("stop")
            for s in [stops] if isinstance(stops, str) else stops or []:
                text = text.split(s)[0] if s else text
            toks = tokenize(text)
        if limit is not None and len(toks) + hidden > limit:
            toks = toks[: max(limit - hidden, 0)]
            return "".join(toks), "length", toks
        return text, "stop", toks

    def _complete(self, body: dict) -> dict:
        if self.rules.known_fields:
            check_fields(body, COMPLETION_FIELDS)
        model = self._check_model(body)
        if self.rules.model_endpoints and model not in self.completion_models:
            raise ApiError(404, "This is a chat model and not supported in the v1/completions endpoint. Did you mean "
                                "to use v1/chat/completions?", param="model")
        if body.get("prompt") is None:
            raise bad("Missing required parameter: 'prompt'.", "prompt", "missing_required_parameter")
        check_ranges(body)
        k = body.get("logprobs")
        top = self.rules.completion_logprobs
        if k is not None and (not isinstance(k, int) or isinstance(k, bool) or not 0 <= k <= top):
            raise bad(f"Invalid 'logprobs': integer above maximum value. Expected a value <= {top}, but got {k} instead.",
                      "logprobs", "integer_above_max_value")
        if body.get("stream"):
            raise bad("This test server does not stream; send 'stream': false.", "stream")
        choices, used = [], 0
        for i in range(body.get("n") or 1):
            text, finish, toks = self._generate(body, body.get("max_tokens", 16), 0)
            used += len(toks)
            lp = None
            if k is not None:
                lps = self._logprobs(toks, k, [], [body.get("prompt"), i])
                offsets = [sum(len(t) for t in toks[:j]) for j in range(len(toks))]
                lp = {"tokens": toks, "token_logprobs": [x[1] for x in lps], "text_offset": offsets,
                      "top_logprobs": [dict(tops) for _, _, tops in lps]}
            choices.append({"index": i, "text": text, "logprobs": lp, "finish_reason": finish})
        prompt = len(tokenize(json.dumps(body["prompt"])))
        return {"id": "cmpl-" + secrets.token_hex(12), "object": "text_completion", "created": int(time.time()),
                "model": self.snapshots.get(model, model), "choices": choices, "system_fingerprint": self.fingerprint,
                "usage": {"prompt_tokens": prompt, "completion_tokens": used, "total_tokens": prompt + used}}
