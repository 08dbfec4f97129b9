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
  * Answers come from `responder(body) -> str | Reply(text, tokens)`; the default answers a json_schema
    request with a document that satisfies the schema (enum values picked from a hash of the messages),
    else a short text. `logprobs`: one entry per token of a simple tokenizer (or the Reply's tokens),
    each with `top_logprobs` alternatives; at an enum value the other enum values are the
    alternatives. `certain=True`: every token has logprob 0 and no alternative, so a verdict scores
    exactly the rating it states. `delay`: seconds each inference request waits (a slow server).
  * Faults for tests (faults.py): `faults=[(kind, count[, path_part]), ...]`, each met by the next
    `count` requests whose path contains `path_part` (default "/completions": the inference
    endpoints), or `fault=callable(path, body) -> kind | None`, which may block to hold a request;
    kind an HTTP status (429 with `Retry-After`, 400, 401, 403, 404, 500, 502, 503),
    "insufficient_quota" (a 429 no retry fixes), "disconnect" (connection closed, no answer),
    "malformed" (a 200 with a cut-off JSON body), an `ApiError` or a `(status, payload)` answered as is.
  * Rules (rules.py `Rules`): `rules="openai"` (the default) holds requests to everything above;
    `rules="vllm"` answers as vLLM's own server does for a self-hosted endpoint (no key, its extra
    fields, any schema, every model on both endpoints, `owned_by: "vllm"`, the models given, default
    "served"); a `Rules` switches single rules off.
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
`srv.pause_batches()` / `srv.resume_batches()`, `srv.keys` (each request's Authorization header, in
memory only), and the settable attributes `responder`, `fault`, `certain`, `delay`, `retry_after`,
`batch_seconds`, `batch_expire`, `batch_fail`, `snapshots` ({alias: snapshot}: the model a response
names, as the API answers an alias with its dated snapshot) and `fingerprint` (`system_fingerprint`).

Two ways to use it: in-process `with OpenAIServer(...) as srv: srv.base_url`, or as a subprocess,
`python -m rlaif.rehearsal.openai_server --port 0 --state-dir DIR`, which writes DIR/server.json (base_url, pid)
when it is ready and keeps files, batches (with a journal of answered lines,
batches/<id>.results.jsonl) and the request log (requests.jsonl) under DIR; a server restarted on the
same DIR reloads them and resumes unfinished batches. Non-API test controls live under /_control/
(pause, resume, faults, state).
Only ever listens on 127.0.0.1.
"""

from rlaif.rehearsal.openai_server.batches import validate_batch_file
from rlaif.rehearsal.openai_server.chat import Reply, default_responder, tokenize
from rlaif.rehearsal.openai_server.rules import (
    CHAT_MODELS, COMPLETION_MODELS, OPENAI, REASONING_MODELS, VLLM, ApiError, Rules, bad, check_strict_schema, mask_key)
from rlaif.rehearsal.openai_server.server import OpenAIServer

__all__ = ["CHAT_MODELS", "COMPLETION_MODELS", "OPENAI", "REASONING_MODELS", "VLLM", "ApiError", "OpenAIServer",
           "Reply", "Rules", "bad", "check_strict_schema", "default_responder", "mask_key", "tokenize",
           "validate_batch_file"]
