"""Faults a test sets on the server: queued `(kind, count[, path part])` or a `fault(path, body)` callable,
and the answer each kind gets."""

from __future__ import annotations


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

    def _fault_answer(self, kind, model):
        if kind == "disconnect":
            return 0, b"", {}
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
