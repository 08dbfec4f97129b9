"""A strict local stand-in for the hosted OpenAI API, for tests and rehearsals (stdlib only on the server side).

No hosted API is reachable from the test machines, so this server is what "the OpenAI API as it
really is" means to the test suite: a real HTTP server on 127.0.0.1 that answers like the API and,
above all, REFUSES what the API refuses, with the API's status codes and error bodies
(`{"error": {"message", "type", "param", "code"}}`). A client that passes against it has at least not
relied on a leniency of vLLM's server (extra fields, `owned_by: "vllm"`, schemas strict mode rejects).

Implements (API reference: https://platform.openai.com/docs/api-reference):
  * auth: `Authorization: Bearer <key>`; else 401 `invalid_api_key`, the key masked as the API does.
  * GET /v1/models, /v1/models/{id} (`owned_by` "system"/"openai", never "vllm").
  * POST /v1/chat/completions (chat/create): unknown top-level fields -> 400 "Unrecognized request
    argument supplied: X" (vLLM's `structured_outputs`, `guided_json`, ...); unknown model -> 404
    `model_not_found`; type/range checks (`temperature` <= 2, `top_logprobs` <= 20, `stop` <= 4, ...);
    `top_logprobs` needs `logprobs: true`; `response_format` text / json_object (the messages must say
    "json") / json_schema, strict schemas checked against the Structured Outputs subset
    (guides/structured-outputs#supported-schemas): root an object, every object
    `additionalProperties: false` and every property in `required`, no `default`, `oneOf`, `allOf`,
    `not`, `if`/`then`/`else`, `minLength`/`maxLength`, `uniqueItems`, `patternProperties`, ... (the
    guide's "not yet supported" keywords, the openai SDKs' own strict list, and refusals reported
    from the live API), only the guide's `format`s. `pattern`, `minimum`/`maximum`, `multipleOf`,
    `minItems`/`maxItems`, `enum`, `const`, `anyOf` (not at the root), `$defs`/`$ref` are accepted, as
    the guide now lists them as supported.
    Reasoning models (guides/reasoning): `max_tokens` -> 400 "use 'max_completion_tokens'";
    non-default `temperature`/`top_p`/penalties, `logit_bias` -> 400; `logprobs`/`top_logprobs` ->
    403 "You are not allowed to request logprobs from this model"; `reasoning_effort` accepted (and
    refused on other models); usage has `completion_tokens_details.reasoning_tokens`, which count
    against `max_completion_tokens` (a small limit gives empty content, finish_reason "length").
  * POST /v1/completions (completions/create) for the legacy completion models only; a chat model there
    (or a completion model on /chat/completions) is refused as the API refuses it. `logprobs` <= 5.
  * Answers come from `responder(body) -> str`; the default answers a json_schema request with a
    document that satisfies the schema (enum values picked from a hash of the messages), else a short
    text. `logprobs`: one entry per token of a simple tokenizer, each with `top_logprobs`
    alternatives; at an enum value the other enum values are the alternatives.
  * Faults for tests: `faults=[(kind, count[, path_part]), ...]`, each met by the next `count` requests
    whose path contains `path_part` (default "/completions": the inference endpoints), or
    `fault=callable(path, body) -> kind | None`; kind 429 (rate limit, `Retry-After`), 500, 502, 503,
    "insufficient_quota" (a 429 no retry fixes), "disconnect" (connection closed, no answer), "retry_after_soon"
    (a 429 with `Retry-After: soon`), "echo_key" (a 403 quoting the key), or a malformed 200: "truncated" (cut
    JSON), "html" (a proxy's page), "no_choices" (`choices: []`), "content_null" (a content filter's null
    content). `batch_fail_whole = N`: the next N batches fail as a whole (their error quotes the key).
  * Files (files/create, retrieve, content, delete, list): multipart upload; purpose "batch" needs a
    .jsonl file name, as the API requires.
  * Batches (batch/create, retrieve, cancel, list): validating -> in_progress -> finalizing ->
    completed | failed | expired | cancelling -> cancelled, run in a thread paced by `batch_seconds`
    per line (and `pause_batches()`), so a test can kill its client mid-batch. The input file is
    validated as the Batch guide says (guides/batch): JSONL, unique `custom_id`, `method` POST, `url`
    equal to the batch's endpoint, `body` with one `model` for the whole file; a bad file fails the
    batch with `errors.data` (code, line, message, param). Each line is answered by the same rules
    as the live endpoint; output lines `{"id", "custom_id", "response": {"status_code", "request_id",
    "body"}, "error": null}`, non-2xx answers and expired/cancelled lines in the error file.
    `batch_expire` / `batch_fail` mark custom_ids expired / failed (500); `processed` counts how often
    each custom_id was answered, across batches, so a test can assert nothing was sent twice.
    `vllm_model=DIR` (off by default) has the lines that pass these rules answered by vLLM's own runner
    (`vllm.entrypoints.openai.run_batch`, CPU settings); start such a server under
    `flock /tmp/rlaif-heavy.lock`.

In-process, a test reads and steers: `srv.base_url` (http://127.0.0.1:PORT/v1), `srv.requests` (a copy of
the log: method, path, query, headers without the key, body, status, time), `srv.count(path, status)`,
`srv.processed` (Counter of custom_ids answered in batches), `srv.add_faults(...)`,
`srv.pause_batches()` / `srv.resume_batches()`, and the settable attributes `responder`, `fault`,
`retry_after`, `batch_seconds`, `batch_expire`, `batch_fail`.

Two ways to use it: in-process `with OpenAIServer(...) as srv: srv.base_url`, or as a subprocess,
`python tests/openai_server.py --port 0 --state-dir DIR`, which writes DIR/server.json (base_url, pid)
when it is ready and keeps files, batches (with a journal of answered lines,
batches/<id>.results.jsonl) and the request log (requests.jsonl) under DIR; a server restarted on the
same DIR reloads them and resumes unfinished batches. Non-API test controls live under /_control/
(pause, resume, faults, state).
Only ever listens on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import copy
import email.parser
import email.policy
import hashlib
import json
import math
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

CHAT_MODELS = ("gpt-4o-mini", "gpt-4o", "gpt-4.1-mini", "gpt-4.1-nano")
REASONING_MODELS = ("o3-mini", "o4-mini", "gpt-5-mini", "gpt-5-nano")
COMPLETION_MODELS = ("gpt-3.5-turbo-instruct", "davinci-002", "babbage-002")

CHAT_FIELDS = {
    "audio", "frequency_penalty", "function_call", "functions", "logit_bias", "logprobs", "max_completion_tokens",
    "max_tokens", "messages", "metadata", "modalities", "model", "n", "parallel_tool_calls", "prediction",
    "presence_penalty", "prompt_cache_key", "prompt_cache_retention", "reasoning_effort", "response_format",
    "safety_identifier", "seed", "service_tier", "stop", "store", "stream", "stream_options", "temperature",
    "tool_choice", "tools", "top_logprobs", "top_p", "user", "verbosity", "web_search_options"}
COMPLETION_FIELDS = {
    "best_of", "echo", "frequency_penalty", "logit_bias", "logprobs", "max_tokens", "model", "n",
    "presence_penalty", "prompt", "seed", "stop", "stream", "stream_options", "suffix", "temperature", "top_p", "user"}
# name: (kind, minimum, maximum); kinds as the API's messages name them
RANGES = {
    "temperature": ("decimal", 0, 2), "top_p": ("decimal", 0, 1), "presence_penalty": ("decimal", -2, 2),
    "frequency_penalty": ("decimal", -2, 2), "max_tokens": ("integer", 1, None),
    "max_completion_tokens": ("integer", 1, None), "n": ("integer", 1, 128), "top_logprobs": ("integer", 0, 20),
    "seed": ("integer", None, None), "best_of": ("integer", 0, 20)}
ROLES = ("system", "assistant", "user", "function", "tool", "developer")
NOT_PERMITTED = (  # strict mode: keywords the API refuses with "'X' is not permitted."
    "default", "oneOf", "allOf", "not", "if", "then", "else", "dependentRequired", "dependentSchemas", "dependencies",
    "minLength", "maxLength", "patternProperties", "unevaluatedProperties", "propertyNames", "minProperties",
    "maxProperties", "unevaluatedItems", "prefixItems", "contains", "minContains", "maxContains", "uniqueItems")
FORMATS = ("date-time", "time", "date", "duration", "email", "hostname", "ipv4", "ipv6", "uuid")
BATCH_ENDPOINTS = ("/v1/chat/completions", "/v1/embeddings", "/v1/completions", "/v1/responses")
TERMINAL = ("completed", "failed", "expired", "cancelled")
def _filtered(reply: dict) -> None:
    """A content filter's answer: each choice without content, finish_reason "content_filter"."""
    for c in reply.get("choices", []):
        c.update(finish_reason="content_filter", logprobs=None)
        c["message"].update(content=None, refusal=None)


# fault kinds answered with HTTP 200 and a body no client can use: bytes as they are, or an edit of a real answer
MALFORMED = {
    "truncated": b'{"id": "chatcmpl-1", "object": "chat.completion", "choices": [{"index": 0, "message": {"role": "as',
    "html": b"<html><head><title>502 Bad Gateway</title></head><body><h1>Bad Gateway</h1></body></html>",
    "no_choices": lambda reply: reply.update(choices=[]),
    "content_null": _filtered,
}
TOKEN_RE = re.compile(r"\s*\w+|\s*[^\w\s]|\s+")
FILLERS = (" the", ",", ".", " a", "\n", " and", " of", " to", " is", " in", "-", " it", " that", " for", " on",
           " with", " as", " was", " this", " be", " or")


class ApiError(Exception):
    """An error the API answers with: its HTTP status and its `error` object."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param=None, code=None):
        super().__init__(message)
        self.status, self.body = status, {"error": {"message": message, "type": type, "param": param, "code": code}}


def bad(message: str, param=None, code=None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def mask_key(key: str) -> str:
    """The key as the API's 401 message shows it: the first 3 and last 4 characters."""
    return key[:3] + "*" * max(len(key) - 7, 0) + key[-4:] if len(key) > 8 else "*" * len(key)


def tokenize(text: str) -> list[str]:
    """A stand-in tokenizer: words and digit runs (with their leading space), single punctuation marks."""
    return TOKEN_RE.findall(text or "")


def unit(*parts) -> float:
    """A deterministic number in [0, 1) from the parts."""
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64


# --- request validation -------------------------------------------------------------------------------

def check_fields(body: dict, allowed: set) -> None:
    for key in body:
        if key not in allowed:
            raise bad(f"Unrecognized request argument supplied: {key}")


def check_ranges(body: dict) -> None:
    for name, (kind, lo, hi) in RANGES.items():
        v = body.get(name)
        if v is None:
            continue
        ok = isinstance(v, int) if kind == "integer" else isinstance(v, (int, float))
        if not ok or isinstance(v, bool):
            got = {str: "a string", bool: "a boolean", list: "an array", dict: "an object", float: "a decimal"}
            raise bad(f"Invalid type for '{name}': expected {'an integer' if kind == 'integer' else 'a decimal'}, "
                      f"but got {got.get(type(v), 'a value')} instead.", name, "invalid_type")
        if lo is not None and v < lo:
            raise bad(f"Invalid '{name}': {kind} below minimum value. Expected a value >= {lo}, but got {v} instead.",
                      name, f"{kind}_below_min_value")
        if hi is not None and v > hi:
            raise bad(f"Invalid '{name}': {kind} above maximum value. Expected a value <= {hi}, but got {v} instead.",
                      name, f"{kind}_above_max_value")
    stop = body.get("stop")
    if isinstance(stop, list) and len(stop) > 4:
        raise bad(f"Invalid 'stop': array too long. Expected an array with maximum length 4, but got an array with "
                  f"length {len(stop)} instead.", "stop", "array_above_max_length")


def check_strict_schema(name: str, schema) -> None:
    """The Structured Outputs subset; the first violation is refused, in the API's words."""
    def refuse(why: str):
        raise bad(f"Invalid schema for response_format '{name}': {why}", "response_format", "invalid_json_schema")

    if not isinstance(schema, dict) or schema.get("type") != "object":
        got = schema.get("type") if isinstance(schema, dict) else None
        refuse(f"schema must be a JSON Schema of 'type: \"object\"', got 'type: \"{got}\"'.")

    def walk(node, ctx: tuple):
        if not isinstance(node, dict):
            return
        for key in node:
            if key in NOT_PERMITTED:
                refuse(f"In context={ctx!r}, '{key}' is not permitted.")
        if "format" in node and node["format"] not in FORMATS:
            refuse(f"In context={ctx!r}, '{node['format']}' is not a valid format.")
        if not any(k in node for k in ("type", "anyOf", "$ref", "enum", "const")):
            refuse(f"In context={ctx!r}, schema must have a 'type' key.")
        types = node.get("type") if isinstance(node.get("type"), list) else [node.get("type")]
        if "object" in types or "properties" in node:
            if node.get("additionalProperties") is not False:
                refuse(f"In context={ctx!r}, 'additionalProperties' is required to be supplied and to be false.")
            props, required = node.get("properties") or {}, node.get("required") or []
            for key in props:
                if key not in required:
                    refuse(f"In context={ctx!r}, 'required' is required to be supplied and to be an array including "
                           f"every key in properties. Missing '{key}'.")
            for key in required:
                if key not in props:
                    refuse(f"In context={ctx!r}, 'required' is required to be supplied and to be an array including "
                           f"every key in properties. Extra required key '{key}' supplied.")
            for key, sub in props.items():
                walk(sub, ctx + ("properties", key))
        if "items" in node:
            walk(node["items"], ctx + ("items",))
        for i, sub in enumerate(node.get("anyOf") or []):
            walk(sub, ctx + ("anyOf", str(i)))
        for section in ("$defs", "definitions"):
            for key, sub in (node.get(section) or {}).items():
                walk(sub, ctx + (section, key))

    walk(schema, ())


def check_response_format(body: dict) -> None:
    rf = body.get("response_format")
    if rf is None:
        return
    kind = rf.get("type") if isinstance(rf, dict) else None
    if kind not in ("text", "json_object", "json_schema"):
        raise bad(f"Invalid value: '{kind}'. Supported values are: 'text', 'json_object', and 'json_schema'.",
                  "response_format.type", "invalid_value")
    for key in rf:
        if key not in ("type", "json_schema"):
            raise bad(f"Unknown parameter: 'response_format.{key}'.", f"response_format.{key}", "unknown_parameter")
    if kind == "json_object" and "json" not in json.dumps(body.get("messages", "")).lower():
        raise bad("'messages' must contain the word 'json' in some form, to use 'response_format' of type "
                  "'json_object'.", "messages")
    if kind != "json_schema":
        return
    js = rf.get("json_schema")
    if not isinstance(js, dict) or "name" not in js:
        raise bad("Missing required parameter: 'response_format.json_schema.name'.",
                  "response_format.json_schema.name", "missing_required_parameter")
    for key in js:
        if key not in ("name", "description", "schema", "strict"):
            raise bad(f"Unknown parameter: 'response_format.json_schema.{key}'.",
                      f"response_format.json_schema.{key}", "unknown_parameter")
    if not re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", str(js["name"])):
        raise bad(f"Invalid 'response_format.json_schema.name': string does not match pattern. Expected a string "
                  f"that matches the pattern '^[a-zA-Z0-9_-]+$'.", "response_format.json_schema.name",
                  "invalid_value")
    if js.get("strict"):
        check_strict_schema(js["name"], js.get("schema"))


def check_messages(body: dict) -> None:
    msgs = body.get("messages")
    if msgs is None:
        raise bad("Missing required parameter: 'messages'.", "messages", "missing_required_parameter")
    if not isinstance(msgs, list) or not msgs:
        raise bad("Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array "
                  "instead.", "messages", "empty_array")
    for i, m in enumerate(msgs):
        role = m.get("role") if isinstance(m, dict) else None
        if role not in ROLES:
            raise bad(f"Invalid value: '{role}'. Supported values are: 'system', 'assistant', 'user', 'function', "
                      f"'tool', and 'developer'.", f"messages[{i}].role", "invalid_value")


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


# --- the server -------------------------------------------------------------------------------------

class OpenAIServer:
    """The server; see the module docstring. Use as a context manager, or start()/stop()."""

    def __init__(self, *, models=CHAT_MODELS + REASONING_MODELS + COMPLETION_MODELS, reasoning_models=REASONING_MODELS,
                 completion_models=COMPLETION_MODELS, api_key: str = "sk-test", responder=None, faults=(),
                 fault=None, retry_after: float = 1.0, reasoning_tokens: int = 16, batch_seconds: float = 0.0,
                 batch_expire=(), batch_fail=(), state_dir=None, port: int = 0, vllm_model: str | None = None):
        self.models, self.api_key = list(models), api_key
        self.reasoning_models, self.completion_models = set(reasoning_models), set(completion_models)
        self.responder = responder or default_responder
        self.faults, self.fault = [list(f) for f in faults], fault
        self.retry_after, self.reasoning_tokens = retry_after, reasoning_tokens
        self.batch_seconds, self.vllm_model = batch_seconds, vllm_model
        self.batch_expire, self.batch_fail = set(batch_expire), set(batch_fail)
        self.batch_fail_whole = 0  # the next N batches fail as a whole (their errors quote the key)
        self.state_dir = Path(state_dir) if state_dir else None
        self.port = port
        self.processed: Counter = Counter()  # custom_id -> times answered in a batch
        self._log: list[dict] = []
        self._files: dict[str, dict] = {}  # id -> {"meta": FileObject, "data": bytes}
        self._batches: dict[str, dict] = {}
        self._results: dict[str, list[dict]] = {}  # batch id -> result lines so far
        self._lock = threading.RLock()
        self._running = threading.Event()
        self._running.set()
        self._stopping = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None

    # lifecycle
    def start(self) -> "OpenAIServer":
        if self.state_dir:
            for sub in ("files", "batches"):
                (self.state_dir / sub).mkdir(parents=True, exist_ok=True)
            self._reload()
        self._httpd = _Server(("127.0.0.1", self.port), _Handler)
        self._httpd.daemon_threads, self._httpd.app = True, self
        self.port = self._httpd.server_address[1]
        threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True).start()
        for b in self._batches.values():
            if b["status"] not in TERMINAL:
                self._spawn(b["id"])
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._running.set()
        if self._httpd:
            self._httpd.shutdown()
            self._httpd.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # what tests read and steer
    @property
    def requests(self) -> list[dict]:
        with self._lock:
            return copy.deepcopy(self._log)

    def count(self, path: str | None = None, status: int | None = None) -> int:
        with self._lock:
            return sum(1 for r in self._log if (path is None or r["path"].endswith(path))
                       and (status is None or r["status"] == status))

    def add_faults(self, *faults) -> None:
        with self._lock:
            self.faults += [list(f) for f in faults]

    def pause_batches(self) -> None:
        self._running.clear()

    def resume_batches(self) -> None:
        self._running.set()

    # persistence (only with a state_dir)
    def _save(self, rel: str, obj) -> None:
        if self.state_dir:
            path = self.state_dir / rel
            tmp = path.with_suffix(path.suffix + ".tmp")
            tmp.write_bytes(obj if isinstance(obj, bytes) else json.dumps(obj).encode())
            os.replace(tmp, path)

    def _append(self, rel: str, obj) -> None:
        if self.state_dir:
            with open(self.state_dir / rel, "a") as f:
                f.write(json.dumps(obj) + "\n")

    def _reload(self) -> None:
        d = self.state_dir
        for meta in (d / "files").glob("*.json"):
            data = (d / "files" / (meta.stem + ".bin")).read_bytes()
            self._files[meta.stem] = {"meta": json.loads(meta.read_text()), "data": data}
        for path in (d / "batches").glob("*.json"):
            b = json.loads(path.read_text())
            self._batches[b["id"]] = b
            res = d / "batches" / f"{b['id']}.results.jsonl"
            self._results[b["id"]] = [json.loads(x) for x in res.read_text().splitlines()] if res.exists() else []
            self.processed.update(r["custom_id"] for r in self._results[b["id"]] if r["response"] is not None)
        if (d / "requests.jsonl").exists():
            self._log = [json.loads(x) for x in (d / "requests.jsonl").read_text().splitlines()]

    # HTTP
    def handle(self, h: "_Handler", method: str) -> None:
        if self._stopping.is_set():  # a stopped server answers nothing, even on a kept-alive connection
            h.close_connection = True
            return
        url = urlsplit(h.path)
        raw = h.rfile.read(int(h.headers.get("Content-Length") or 0))
        headers = {k.lower(): v for k, v in h.headers.items() if k.lower() != "authorization"}
        record = {"method": method, "path": url.path, "query": url.query, "headers": headers, "body": None,
                  "time": time.time()}
        extra: dict = {}
        try:
            self._authenticate(h.headers.get("Authorization"))
            status, payload, extra = self._route(method, url.path, parse_qs(url.query), headers, raw, record)
        except ApiError as e:
            status, payload = e.status, e.body
        record["status"] = status
        with self._lock:
            self._log.append(record)
            self._append("requests.jsonl", record)
        if status == 0:  # fault "disconnect": no answer at all
            h.close_connection = True
            return
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/octet-stream" if isinstance(payload, bytes) else "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.send_header("x-request-id", "req_" + secrets.token_hex(16))
        for k, v in extra.items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(data)

    def _authenticate(self, header: str | None) -> None:
        if not header or not header.startswith("Bearer ") or not header[7:].strip():
            raise ApiError(401, "You didn't provide an API key. You need to provide your API key in an Authorization "
                                "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password "
                                "field (with blank username) if you're accessing the API from your browser and are "
                                "prompted for a username. You can obtain an API key from "
                                "https://platform.openai.com/account/api-keys.")
        key = header[7:].strip()
        if key != self.api_key:
            raise ApiError(401, f"Incorrect API key provided: {mask_key(key)}. You can find your API key at "
                                f"https://platform.openai.com/account/api-keys.", code="invalid_api_key")

    def _route(self, method, path, query, headers, raw, record):
        parts = path.strip("/").split("/")
        if parts[:1] == ["_control"]:
            return self._control(parts[1:], raw)
        if parts[:1] != ["v1"]:
            raise ApiError(404, f"Invalid URL ({method} {path})")
        parts, body, form = parts[1:], None, None
        if method == "POST" and parts == ["files"]:
            form = parse_multipart(headers.get("content-type", ""), raw)
            record["body"] = {k: (v if isinstance(v, str) else {"filename": v[0], "bytes": len(v[1])})
                              for k, v in form.items()}
        elif method == "POST":
            try:
                body = json.loads(raw or b"{}")
                assert isinstance(body, dict)
            except (ValueError, AssertionError):
                raise bad("We could not parse the JSON body of your request. (HINT: This likely means you aren't using "
                          "your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was "
                          "not valid JSON. If you have trouble figuring out how to fix this, please contact us through "
                          "our help center at help.openai.com.)") from None
            record["body"] = body
        kind = self._take_fault(path, record["body"])
        if kind is not None:
            return self._fault_answer(kind, (body or {}).get("model"), path, body)
        if form is not None:
            return 200, self._upload(form), {}
        route = (method, parts[0] if parts else "", len(parts))
        if route[:2] == ("POST", "chat") and parts[1:] == ["completions"] or route == ("POST", "completions", 1):
            return (*self.answer(path[3:], body), {})
        if route == ("GET", "models", 1):
            return 200, {"object": "list", "data": [self._model(m) for m in self.models]}, {}
        if route == ("GET", "models", 2):
            if parts[1] not in self.models:
                raise ApiError(404, f"The model '{parts[1]}' does not exist", param="model", code="model_not_found")
            return 200, self._model(parts[1]), {}
        if route == ("GET", "files", 1):
            with self._lock:
                return 200, listing([f["meta"] for f in self._files.values()], query), {}
        if parts[:1] == ["files"] and len(parts) in (2, 3):
            f = self._file(parts[1])
            if method == "GET" and len(parts) == 2:
                return 200, f["meta"], {}
            if method == "GET" and parts[2:] == ["content"]:
                return 200, f["data"], {}
            if method == "DELETE" and len(parts) == 2:
                with self._lock:
                    del self._files[parts[1]]
                    if self.state_dir:
                        for suffix in (".json", ".bin"):
                            (self.state_dir / "files" / (parts[1] + suffix)).unlink(missing_ok=True)
                return 200, {"id": parts[1], "object": "file", "deleted": True}, {}
        if route == ("POST", "batches", 1):
            return 200, self._create_batch(body), {}
        if route == ("GET", "batches", 1):
            with self._lock:
                return 200, listing(list(self._batches.values())[::-1], query), {}
        if parts[:1] == ["batches"] and len(parts) in (2, 3):
            with self._lock:
                b = self._batches.get(parts[1])
                if b is None:
                    raise ApiError(404, f"No batch found with id '{parts[1]}'.", param="batch_id")
                if method == "GET" and len(parts) == 2:
                    return 200, copy.deepcopy(b), {}
                if method == "POST" and parts[2:] == ["cancel"]:
                    if b["status"] in TERMINAL or b["status"] == "cancelling":
                        raise ApiError(409, f"Cannot cancel a batch with status '{b['status']}'.", param="batch_id")
                    b.update(status="cancelling", cancelling_at=int(time.time()))
                    self._save(f"batches/{b['id']}.json", b)
                    return 200, copy.deepcopy(b), {}
        raise ApiError(404, f"Invalid URL ({method} {path})")

    def _control(self, parts, raw):
        if parts == ["pause"]:
            self.pause_batches()
        elif parts == ["resume"]:
            self.resume_batches()
        elif parts == ["faults"]:
            self.add_faults(*json.loads(raw)["faults"])
        elif parts != ["state"]:
            raise ApiError(404, f"Invalid URL (/_control/{'/'.join(parts)})")
        with self._lock:
            return 200, {"processed": dict(self.processed), "requests": len(self._log), "faults": self.faults,
                         "paused": not self._running.is_set()}, {}

    def _model(self, model: str) -> dict:
        return {"id": model, "object": "model", "created": 1_700_000_000, "owned_by": "system"}

    # faults and inference
    def _take_fault(self, path: str, body):
        """The fault this request meets: `fault(path, body)`, else the first queued (kind, count[, path part])
        whose path part (default "/completions": the inference endpoints) is in the request's path."""
        if self.fault:
            return self.fault(path, body)
        with self._lock:
            for f in self.faults:
                if (f[2] if len(f) > 2 else "/completions") in path:
                    f[1] -= 1
                    if f[1] <= 0:
                        self.faults.remove(f)
                    return f[0]
        return None

    def _fault_answer(self, kind, model, path: str = "", body=None):
        if kind == "disconnect":
            return 0, b"", {}
        if kind in MALFORMED:  # a 200 whose body is not a usable completion (a proxy's page, a cut stream)
            if isinstance(MALFORMED[kind], bytes):
                return 200, MALFORMED[kind], {}
            status, reply = self.answer(path[3:], body or {})
            MALFORMED[kind](reply)
            return status, reply, {}
        if kind == "retry_after_soon":  # a 429 whose Retry-After is neither seconds nor a date
            return 429, {"error": {"message": f"Rate limit reached for {model}.", "type": "requests", "param": None,
                                   "code": "rate_limit_exceeded"}}, {"Retry-After": "soon"}
        if kind == "echo_key":  # a 403 that quotes the key it was sent, as some servers do
            return 403, {"error": {"message": f"key {self.api_key} may not use this endpoint", "type": "invalid_request_error",
                                   "param": None, "code": "forbidden"}}, {}
        if kind == 429:
            wait = f"{self.retry_after:g}"
            return 429, {"error": {
                "message": f"Rate limit reached for {model} in organization org-test on requests per min (RPM): "
                           f"Limit 3, Used 3, Requested 1. Please try again in {wait}s. Visit "
                           f"https://platform.openai.com/account/rate-limits to learn more.",
                "type": "requests", "param": None, "code": "rate_limit_exceeded"}}, {
                "Retry-After": wait, "x-ratelimit-limit-requests": "3", "x-ratelimit-remaining-requests": "0",
                "x-ratelimit-reset-requests": f"{wait}s"}
        if kind == "insufficient_quota":
            return 429, {"error": {
                "message": "You exceeded your current quota, please check your plan and billing details. For more "
                           "information on this error, read the docs: "
                           "https://platform.openai.com/docs/guides/error-codes/api-errors.",
                "type": "insufficient_quota", "param": None, "code": "insufficient_quota"}}, {}
        message = {500: "The server had an error while processing your request. Sorry about that!",
                   502: "Bad gateway.", 503: "The engine is currently overloaded, please try again later"}
        return int(kind), {"error": {"message": message.get(int(kind), "Server error."), "type": "server_error",
                                     "param": None, "code": None}}, {}

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
        check_fields(body, CHAT_FIELDS)
        model = self._check_model(body)
        if model in self.completion_models:
            raise ApiError(404, "This is not a chat model and thus not supported in the v1/chat/completions "
                                "endpoint. Did you mean to use v1/completions?", param="model")
        check_messages(body)
        check_ranges(body)
        reasoning = model in self.reasoning_models
        if reasoning:
            self._check_reasoning(model, body)
        elif "reasoning_effort" in body:
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
        check_response_format(body)
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
                lps = token_logprobs(toks, k, enum_sets(schema), [body.get("messages"), i])
                choice["logprobs"] = {"content": [{**entry(t, lp), "top_logprobs": [entry(a, b) for a, b in tops]}
                                                  for t, lp, tops in lps], "refusal": None}
            choices.append(choice)
        prompt = sum(len(tokenize(json.dumps(m.get("content")))) + 4 for m in body["messages"])
        completion = used + hidden * len(choices)
        return {"id": "chatcmpl-" + secrets.token_hex(12), "object": "chat.completion", "created": int(time.time()),
                "model": model, "choices": choices, "service_tier": "default", "system_fingerprint": "fp_test",
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
        stops = body.get("stop")
        for s in [stops] if isinstance(stops, str) else stops or []:
            text = text.split(s)[0] if s else text
        toks = tokenize(text)
        if limit is not None and len(toks) + hidden > limit:
            toks = toks[: max(limit - hidden, 0)]
            return "".join(toks), "length", toks
        return text, "stop", toks

    def _complete(self, body: dict) -> dict:
        check_fields(body, COMPLETION_FIELDS)
        model = self._check_model(body)
        if model not in self.completion_models:
            raise ApiError(404, "This is a chat model and not supported in the v1/completions endpoint. Did you mean "
                                "to use v1/chat/completions?", param="model")
        if body.get("prompt") is None:
            raise bad("Missing required parameter: 'prompt'.", "prompt", "missing_required_parameter")
        check_ranges(body)
        k = body.get("logprobs")
        if k is not None and (not isinstance(k, int) or isinstance(k, bool) or not 0 <= k <= 5):
            raise bad(f"Invalid 'logprobs': integer above maximum value. Expected a value <= 5, but got {k} instead.",
                      "logprobs", "integer_above_max_value")
        if body.get("stream"):
            raise bad("This test server does not stream; send 'stream': false.", "stream")
        choices, used = [], 0
        for i in range(body.get("n") or 1):
            text, finish, toks = self._generate(body, body.get("max_tokens", 16), 0)
            used += len(toks)
            lp = None
            if k is not None:
                lps = token_logprobs(toks, k, [], [body.get("prompt"), i])
                offsets = [sum(len(t) for t in toks[:j]) for j in range(len(toks))]
                lp = {"tokens": toks, "token_logprobs": [x[1] for x in lps], "text_offset": offsets,
                      "top_logprobs": [dict(tops) for _, _, tops in lps]}
            choices.append({"index": i, "text": text, "logprobs": lp, "finish_reason": finish})
        prompt = len(tokenize(json.dumps(body["prompt"])))
        return {"id": "cmpl-" + secrets.token_hex(12), "object": "text_completion", "created": int(time.time()),
                "model": model, "choices": choices, "system_fingerprint": "fp_test",
                "usage": {"prompt_tokens": prompt, "completion_tokens": used, "total_tokens": prompt + used}}

    # files
    def _file(self, file_id: str) -> dict:
        with self._lock:
            f = self._files.get(file_id)
        if f is None:
            raise ApiError(404, f"No such File object: {file_id}", param="id")
        return f

    def _store_file(self, filename: str, data: bytes, purpose: str) -> dict:
        meta = {"id": "file-" + secrets.token_urlsafe(16).replace("-", "a").replace("_", "b"), "object": "file",
                "bytes": len(data), "created_at": int(time.time()), "filename": filename, "purpose": purpose,
                "status": "processed", "expires_at": None, "status_details": None}
        with self._lock:
            self._files[meta["id"]] = {"meta": meta, "data": data}
            self._save(f"files/{meta['id']}.bin", data)
            self._save(f"files/{meta['id']}.json", meta)
        return meta

    def _upload(self, form: dict) -> dict:
        for name in ("purpose", "file"):
            if name not in form:
                raise bad(f"Missing required parameter: '{name}'.", name, "missing_required_parameter")
        purpose = form["purpose"]
        if purpose not in ("assistants", "batch", "fine-tune", "vision", "user_data", "evals"):
            raise bad(f"'{purpose}' is not one of ['fine-tune', 'assistants', 'batch', 'user_data', 'responses', "
                      f"'vision', 'evals'] - 'purpose'", "purpose")
        filename, data = form["file"]
        if purpose == "batch" and not filename.endswith(".jsonl"):
            raise bad("Invalid file format for Batch API. Must be .jsonl")
        return self._store_file(filename, data, purpose)

    # batches
    def _create_batch(self, body: dict) -> dict:
        check_fields(body, {"input_file_id", "endpoint", "completion_window", "metadata", "output_expires_after"})
        for name in ("input_file_id", "endpoint", "completion_window"):
            if name not in body:
                raise bad(f"Missing required parameter: '{name}'.", name, "missing_required_parameter")
        if body["endpoint"] not in BATCH_ENDPOINTS:
            raise bad(f"Invalid value: '{body['endpoint']}'. Supported values are: '/v1/chat/completions', "
                      f"'/v1/embeddings', '/v1/completions', and '/v1/responses'.", "endpoint", "invalid_value")
        if body["completion_window"] != "24h":
            raise bad(f"Invalid value: '{body['completion_window']}'. Supported values are: '24h'.",
                      "completion_window", "invalid_value")
        meta = body.get("metadata")
        if meta is not None and (not isinstance(meta, dict) or len(meta) > 16):
            raise bad("Invalid 'metadata': too many properties. Expected an object with at most 16 properties.",
                      "metadata", "object_above_max_properties")
        f = self._file(body["input_file_id"])
        if f["meta"]["purpose"] != "batch":
            raise bad(f"The input file {body['input_file_id']} must have purpose 'batch'.", "input_file_id")
        now = int(time.time())
        b = {"id": "batch_" + secrets.token_hex(16), "object": "batch", "endpoint": body["endpoint"], "model": None,
             "errors": None, "input_file_id": body["input_file_id"], "completion_window": "24h",
             "status": "validating", "output_file_id": None, "error_file_id": None, "created_at": now,
             "in_progress_at": None, "expires_at": now + 86400, "finalizing_at": None, "completed_at": None,
             "failed_at": None, "expired_at": None, "cancelling_at": None, "cancelled_at": None,
             "request_counts": {"total": 0, "completed": 0, "failed": 0}, "metadata": meta,
             "usage": {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0,
                       "input_tokens_details": {"cached_tokens": 0},
                       "output_tokens_details": {"reasoning_tokens": 0}}}
        with self._lock:
            self._batches[b["id"]], self._results[b["id"]] = b, []
            self._save(f"batches/{b['id']}.json", b)
            created = copy.deepcopy(b)
        self._spawn(b["id"])
        return created

    def _spawn(self, batch_id: str) -> None:
        threading.Thread(target=self._run_batch, args=(batch_id,), daemon=True).start()

    def _set(self, b: dict, **fields) -> None:
        with self._lock:
            b.update(fields)
            self._save(f"batches/{b['id']}.json", b)

    def _wait(self, b: dict) -> bool:
        """Sleep `batch_seconds`, then hold while paused (unless cancelled); False once the server stops."""
        if self.batch_seconds and self._stopping.wait(self.batch_seconds):
            return False
        while not self._running.wait(0.05) and b["status"] != "cancelling":
            pass
        return not self._stopping.is_set()

    def _run_batch(self, batch_id: str) -> None:
        b = self._batches[batch_id]
        lines, errors = validate_batch_file(self._files.get(b["input_file_id"], {}).get("data", b""), b["endpoint"])
        with self._lock:
            if not errors and self.batch_fail_whole > 0:  # a fault: the whole batch fails, as for an unpaid bill
                self.batch_fail_whole -= 1
                errors = [{"code": "billing_hard_limit_reached", "message": f"Billing hard limit reached (key "
                           f"{self.api_key}).", "param": None, "line": None}]
        if errors:
            self._set(b, status="failed", failed_at=int(time.time()), errors={"object": "list", "data": errors})
            return
        if b["status"] == "validating":
            self._set(b, status="in_progress", in_progress_at=int(time.time()), model=lines[0]["body"]["model"],
                      request_counts={"total": len(lines), "completed": 0, "failed": 0})
        done, for_vllm = {r["custom_id"] for r in self._results[batch_id]}, []
        for line in lines:
            if line["custom_id"] in done:
                continue
            if not self._wait(b):
                return
            if b["status"] == "cancelling":
                break
            result = self._answer_line(b, line)
            if self.vllm_model and (result["response"] or {}).get("status_code") == 200:
                for_vllm.append(line)  # it passed the API's rules: vLLM answers it
            else:
                self._record(b, result)
        if for_vllm and b["status"] != "cancelling" and not self._run_vllm(b, for_vllm):
            return
        self._finish(b, lines)

    def _answer_line(self, b: dict, line: dict) -> dict:
        cid = line["custom_id"]
        result = {"id": "batch_req_" + secrets.token_hex(12), "custom_id": cid, "response": None, "error": None}
        if cid in self.batch_expire:
            result["error"] = {"code": "batch_expired",
                               "message": "This request could not be executed before the completion window expired."}
            return result
        if cid in self.batch_fail:
            status, body, _ = self._fault_answer(500, line["body"].get("model"))
        else:
            status, body = self.answer(b["endpoint"], line["body"])
        result["response"] = {"status_code": status, "request_id": secrets.token_hex(16), "body": body}
        return result

    def _record(self, b: dict, result: dict) -> None:
        with self._lock:
            self._results[b["id"]].append(result)
            self._append(f"batches/{b['id']}.results.jsonl", result)  # the journal a restart resumes from
            if result["response"] is not None:
                self.processed[result["custom_id"]] += 1
            ok = (result["response"] or {}).get("status_code") == 200
            counts = b["request_counts"]
            counts["completed" if ok else "failed"] += 1
            usage = ((result["response"] or {}).get("body") or {}).get("usage") or {}
            b["usage"]["input_tokens"] += usage.get("prompt_tokens", 0)
            b["usage"]["output_tokens"] += usage.get("completion_tokens", 0)
            b["usage"]["total_tokens"] += usage.get("total_tokens", 0)
            self._save(f"batches/{b['id']}.json", b)

    def _finish(self, b: dict, lines: list[dict]) -> None:
        cancelled = b["status"] == "cancelling"
        self._set(b, finalizing_at=int(time.time()), **({} if cancelled else {"status": "finalizing"}))
        with self._lock:
            results = list(self._results[b["id"]])
        answered = {r["custom_id"] for r in results}
        results += [{"id": "batch_req_" + secrets.token_hex(12), "custom_id": x["custom_id"], "response": None,
                     "error": {"code": "batch_cancelled", "message": "This request was cancelled."}}
                    for x in lines if x["custom_id"] not in answered]
        good = [r for r in results if (r["response"] or {}).get("status_code") == 200]
        failed = [r for r in results if r not in good]
        jsonl = lambda rs: "".join(json.dumps(r) + "\n" for r in rs).encode()  # noqa: E731
        out = self._store_file("batch_output.jsonl", jsonl(good), "batch_output")["id"] if good else None
        err = self._store_file("batch_errors.jsonl", jsonl(failed), "batch_output")["id"] if failed else None
        now = int(time.time())
        if cancelled:
            self._set(b, status="cancelled", cancelled_at=now, output_file_id=out, error_file_id=err)
        elif any((r["error"] or {}).get("code") == "batch_expired" for r in results):
            self._set(b, status="expired", expired_at=now, output_file_id=out, error_file_id=err)
        else:
            self._set(b, status="completed", completed_at=now, output_file_id=out, error_file_id=err)

    def _run_vllm(self, b: dict, lines: list[dict]) -> bool:
        """Answer `lines` with vLLM's own batch runner on the model directory `vllm_model` (CPU settings).
        The process that starts this server holds /tmp/rlaif-heavy.lock for it (a nested flock would deadlock)."""
        with tempfile.TemporaryDirectory() as tmp:
            src, dst = Path(tmp) / "in.jsonl", Path(tmp) / "out.jsonl"
            src.write_text("".join(json.dumps(x) + "\n" for x in lines))
            cmd = [sys.executable, "-m", "vllm.entrypoints.openai.run_batch", "-i", str(src), "-o", str(dst),
                   "--model", self.vllm_model, "--served-model-name", lines[0]["body"]["model"],
                   "--dtype", "float32", "--enforce-eager", "--max-model-len", "2048"]
            env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
            run = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            if run.returncode != 0 or not dst.exists():
                self._set(b, status="failed", failed_at=int(time.time()), errors={"object": "list", "data": [
                    {"code": "vllm_failed", "message": run.stderr[-2000:], "param": None, "line": None}]})
                return False
            for out in (json.loads(x) for x in dst.read_text().splitlines() if x.strip()):
                self._record(b, out)
        return True


def validate_batch_file(data: bytes, endpoint: str) -> tuple[list[dict], list[dict]]:
    """The Batch API's checks of an input file: (lines, errors); errors as in `batch.errors.data`."""
    lines, errors, seen, models = [], [], set(), set()

    def err(code, message, line, param=None):
        errors.append({"code": code, "message": message, "param": param, "line": line})

    text = data.decode("utf-8", errors="replace")
    if not text.strip():
        err("empty_file", "The input file is empty.", None)
    for n, raw in enumerate(text.splitlines(), 1):
        try:
            line = json.loads(raw)
            assert isinstance(line, dict)
        except (ValueError, AssertionError):
            err("invalid_json_line", "This line is not parseable as valid JSON.", n)
            continue
        missing = [k for k in ("custom_id", "method", "url", "body") if k not in line]
        if missing:
            err("missing_required_parameter", f"Missing required parameter: '{missing[0]}'.", n, missing[0])
            continue
        if line["method"] != "POST":
            err("invalid_value", f"Invalid value: '{line['method']}'. Supported values are: 'POST'.", n, "method")
        if line["url"] != endpoint:
            err("url_mismatch", f"The url '{line['url']}' does not match the batch's endpoint '{endpoint}'.", n, "url")
        if line["custom_id"] in seen:
            err("duplicate_custom_id", f"The custom_id '{line['custom_id']}' is used more than once in this file. "
                                       "Each request must have a unique custom_id.", n, "custom_id")
        seen.add(line["custom_id"])
        model = (line["body"] or {}).get("model") if isinstance(line["body"], dict) else None
        if not model:
            err("missing_required_parameter", "Missing required parameter: 'body.model'.", n, "body.model")
        elif models and model not in models:
            err("model_mismatch", f"The model '{model}' differs from the model of earlier lines; a batch file must use "
                                  "one model.", n, "body.model")
        models.add(model)
        lines.append(line)
    if len(lines) > 50_000:
        err("too_many_tasks", "The input file has more than 50,000 requests.", None)
    return lines, errors


def listing(items: list[dict], query: dict) -> dict:
    """A list page: `after` (an id) and `limit`, newest first for batches as the API pages them."""
    after, limit = query.get("after", [None])[0], int(query.get("limit", ["20"])[0])
    if after:
        ids = [x["id"] for x in items]
        items = items[ids.index(after) + 1:] if after in ids else []
    page = copy.deepcopy(items[:limit])
    return {"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None, "has_more": len(items) > limit}


def parse_multipart(content_type: str, raw: bytes) -> dict:
    """Form fields of a multipart/form-data body: text fields as str, files as (filename, bytes)."""
    if not content_type.startswith("multipart/form-data"):
        raise bad("Invalid Content-Type header (expected multipart/form-data).")
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + raw)
    form = {}
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True) or b""
        filename = part.get_filename()
        form[name] = (filename, payload) if filename is not None else payload.decode()
    return form


class _Server(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client that hung up (a refused stage)
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):  # noqa: N802
        self.server.app.handle(self, "GET")

    def do_POST(self):  # noqa: N802
        self.server.app.handle(self, "POST")

    def do_DELETE(self):  # noqa: N802
        self.server.app.handle(self, "DELETE")

    def log_message(self, *args):
        pass


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--port", type=int, default=0, help="0: a free port (see STATE_DIR/server.json)")
    p.add_argument("--state-dir", required=True)
    p.add_argument("--api-key", default="sk-test")
    p.add_argument("--models", help="comma-separated model ids (default: the built-in chat, reasoning, completion)")
    p.add_argument("--reasoning-models", help="comma-separated; which of the models are reasoning models")
    p.add_argument("--batch-seconds", type=float, default=0.0, help="delay before each batch line")
    p.add_argument("--retry-after", type=float, default=1.0)
    p.add_argument("--fault", action="append", default=[], metavar="KIND:COUNT[:PATH]",
                   help="e.g. 429:2, 500:1:/batches, disconnect:1")
    p.add_argument("--expire", action="append", default=[], metavar="CUSTOM_ID")
    p.add_argument("--fail", action="append", default=[], metavar="CUSTOM_ID")
    p.add_argument("--vllm-model", help="answer batches with vLLM's run_batch on this model directory")
    p.add_argument("--paused", action="store_true", help="start with batch processing paused")
    a = p.parse_args(argv)
    kw = {}
    if a.models:
        kw["models"] = a.models.split(",")
    if a.reasoning_models:
        kw["reasoning_models"] = a.reasoning_models.split(",")
    faults = [(int(k) if k.isdigit() else k, int(n), *rest) for k, n, *rest in (f.split(":", 2) for f in a.fault)]
    srv = OpenAIServer(api_key=a.api_key, batch_seconds=a.batch_seconds, retry_after=a.retry_after, faults=faults,
                       batch_expire=a.expire, batch_fail=a.fail, state_dir=a.state_dir, port=a.port,
                       vllm_model=a.vllm_model, **kw)
    if a.paused:
        srv.pause_batches()
    srv.start()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    info = Path(a.state_dir) / "server.json"
    tmp = info.with_suffix(".tmp")
    tmp.write_text(json.dumps({"base_url": srv.base_url, "port": srv.port, "pid": os.getpid()}))
    os.replace(tmp, info)
    print(f"READY {srv.base_url}", flush=True)
    done.wait()
    srv.stop()


if __name__ == "__main__":
    main()
