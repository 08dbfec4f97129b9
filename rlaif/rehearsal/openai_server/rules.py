"""The hosted API's rules for a request: which fields, types, ranges, messages and strict schemas it
takes, and the error it answers with otherwise (`ApiError`, in the API's own words)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

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


@dataclass(frozen=True)
class Rules:
    """Which rules the server holds a request to. `OPENAI` (the default) is the hosted API as it is;
    `VLLM` is vLLM's own OpenAI-compatible server as a self-hosted endpoint answers: no key, its extra
    fields (`structured_outputs`, ...) taken, any JSON schema, every model on both endpoints, up to 20
    log-probs on /completions, and `owned_by: "vllm"` (which the client reads as provider `vllm`).
    A test switches one rule off with `dataclasses.replace(OPENAI, auth=False)`."""

    owned_by: str = "system"  # what GET /models says owns each model
    auth: bool = True  # `Authorization: Bearer <api_key>` required, else 401
    known_fields: bool = True  # unknown top-level fields (and `reasoning_effort` on other models) -> 400
    strict_schemas: bool = True  # strict json_schema in the Structured Outputs subset; json_object needs "json"
    model_endpoints: bool = True  # a chat model only on /chat/completions, a completion model only on /completions
    completion_logprobs: int = 5  # the most `logprobs` /completions takes


OPENAI = Rules()
VLLM = Rules(owned_by="vllm", auth=False, known_fields=False, strict_schemas=False, model_endpoints=False,
             completion_logprobs=20)
RULES = {"openai": OPENAI, "vllm": VLLM}


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


def check_response_format(body: dict, strict: bool = True) -> None:
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
    if strict and kind == "json_object" and "json" not in json.dumps(body.get("messages", "")).lower():
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
    if strict and js.get("strict"):
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
