"""Faults a test sets on the server: queued `(kind, count[, path part])` or a `fault(path, body)` callable,
and the answer each kind gets.

Kinds:
    an HTTP status      its error in the API's words: 429 a rate limit with `Retry-After` (`retry_after`),
                        400, 401, 403, 404, 500, 502, 503 (any other status: a server error)
    "insufficient_quota"  a 429 no retry fixes
    "disconnect"        the connection closed with no answer at all (a reset)
    "malformed"         a 200 whose JSON body is cut off mid-document
    a malformed 200     "truncated" (cut JSON), "html" (a proxy's page), "no_choices" (`choices: []`),
                        "content_null" (a content filter's null content)
    "retry_after_soon"  a 429 whose `Retry-After` is neither seconds nor a date
    "echo_key"          a 403 that quotes the key it was sent, as some servers do
    an `ApiError`       that error, as it is (a test's own message)
    (status, payload)   that answer, as it is: a JSON-able payload or bytes (e.g. a 200 that is no model list)

A `fault` callable is called with every request (GET /models too: `body` is None) before it is
answered; it may block, which holds the request (a slow or hung server), and returns a kind or None.
"""

from __future__ import annotations

from rlaif.rehearsal.openai_server.rules import ApiError

MESSAGES = {  # status -> (type, message) of the API's error body
    400: ("invalid_request_error", "The request was malformed."),
    401: ("invalid_request_error", "Incorrect API key provided. You can find your API key at "
                                   "https://platform.openai.com/account/api-keys."),
    403: ("invalid_request_error", "You are not allowed to access this resource."),
    404: ("invalid_request_error", "The model does not exist or you do not have access to it."),
    500: ("server_error", "The server had an error while processing your request. Sorry about that!"),
    502: ("server_error", "Bad gateway."),
    503: ("server_error", "The engine is currently overloaded, please try again later"),
}


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


class Faults:
    """The faults of `OpenAIServer` (a mixin)."""

    def add_faults(self, *faults) -> None:
        with self._lock:
            self.faults += [list(f) for f in faults]

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
        if isinstance(kind, ApiError):
            return kind.status, kind.body, {}
        if isinstance(kind, (tuple, list)):
            return kind[0], kind[1], {}
        if kind == "disconnect":
            return 0, b"", {}
        if kind in MALFORMED:  # a 200 whose body is not a usable completion (a proxy's page, a cut stream)
            if isinstance(MALFORMED[kind], bytes):
                return 200, MALFORMED[kind], {}
            status, reply = self.answer(path[3:], body or {})
            MALFORMED[kind](reply)
            return status, reply, {}
        if kind == "retry_after_soon":
            return 429, {"error": {"message": f"Rate limit reached for {model}.", "type": "requests", "param": None,
                                   "code": "rate_limit_exceeded"}}, {"Retry-After": "soon"}
        if kind == "echo_key":
            return 403, {"error": {"message": f"key {self.api_key} may not use this endpoint",
                                   "type": "invalid_request_error", "param": None, "code": "forbidden"}}, {}
        if kind == "malformed":
            return 200, b'{"id": "chatcmpl-0", "object": "chat.completion", "choices": [{"ind', {
                "Content-Type": "application/json"}
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
        kind_, message = MESSAGES.get(int(kind), ("server_error", "Server error."))
        code = {401: "invalid_api_key", 404: "model_not_found"}.get(int(kind))
        return int(kind), {"error": {"message": message, "type": kind_, "param": None, "code": code}}, {}
