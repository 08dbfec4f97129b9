"""Self-hosted OpenAI-compatible endpoints for tests: the strict server of rlaif.rehearsal.openai_server
under vLLM's rules (no key, vLLM's extra fields, any model it is given on both endpoints, `owned_by:
"vllm"`), answering what a test chooses, with its fault switches.

    with serving(responder, models=("gen-a", "judge")) as srv:   # srv.base_url, srv.requests, srv.keys
        srv.fault = lambda path, body: 503 if body and "FAIL" in asked(body) else None

`said(text)` is an answer sent whole (one token, so never cut at the token limit); `verdict(rating)` a
judge's JSON verdict in the tokens a judge reads its rating from. The log-probs are `certain` (0 for
every token), so a verdict scores exactly the rating it states. `judging(body)` tells a judge's
request (it asks for a response_format) from a member's; `asked(body)` is its last message.
"""

from __future__ import annotations

from contextlib import contextmanager

from rlaif.rehearsal.openai_server import OpenAIServer, Reply


@contextmanager
def serving(responder=None, models=("served",), **switches):
    """An OpenAIServer with vLLM's rules on a free port of 127.0.0.1; `switches` as OpenAIServer takes them."""
    with OpenAIServer(rules="vllm", models=models, responder=responder, certain=True, **switches) as srv:
        yield srv


def said(text: str) -> Reply:
    return Reply(text, [text])


def verdict(rating) -> Reply:
    tokens = ['{"', "rating", '":', str(rating), ',"', "rationale", '":"', "fine", '"}']
    return Reply("".join(tokens), tokens)


def judging(body: dict) -> bool:
    return "response_format" in body


def asked(body: dict) -> str:
    return body["messages"][-1]["content"]


def posted(srv: OpenAIServer, path: str = "/chat/completions") -> list[dict]:
    """The bodies of the requests to `path` the server has answered, in order."""
    return [r["body"] for r in srv.requests if r["path"].endswith(path)]
