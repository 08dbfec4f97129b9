"""Shared fixtures: real bundled models, a tiny 2-layer model from a real config, isolated Prefect."""

from __future__ import annotations

import json
import os
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def isolated_prefect(tmp_path_factory):
    """Prefect state in a temp PREFECT_HOME, never the user's."""
    home = tmp_path_factory.mktemp("prefect_home")
    os.environ["PREFECT_HOME"] = str(home)
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    yield home


@pytest.fixture(scope="session")
def prefect_harness(isolated_prefect):
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def smollm2_dir() -> str:
    from generation.models import prepare_bundled

    return str(prepare_bundled("smollm2-135m-instruct"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smollm2_dir) -> str:
    """SmolLM2's real config cut to 2 layers, random weights, with SmolLM2's tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(smollm2_dir)
    config.num_hidden_layers = 2
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    out = tmp_path_factory.mktemp("tiny-smollm2")
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(smollm2_dir).save_pretrained(out)
    return str(out)


class FakeOpenAI(BaseHTTPRequestHandler):
    """Base of the tests' OpenAI-compatible servers on 127.0.0.1 (real HTTP, answers the tests
    choose): a subclass's `reply(body)` returns the status and JSON payload of each request."""

    def reply(self, body: dict) -> tuple[int, dict]:
        raise NotImplementedError

    def do_POST(self):  # noqa: N802
        status, payload = self.reply(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def chat_completion(model: str, text: str, logprobs: dict | None = None, completion_tokens: int = 1) -> dict:
    choice = {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}
    if logprobs is not None:
        choice["logprobs"] = logprobs
    return {"id": "x", "object": "chat.completion", "created": 0, "model": model, "choices": [choice],
            "usage": {"prompt_tokens": 5, "completion_tokens": completion_tokens, "total_tokens": 5 + completion_tokens}}


SERVER_ERROR = {"error": {"message": "upstream overloaded", "type": "server_error"}}


@contextmanager
def serving(handler: type[FakeOpenAI]):
    """Serve `handler` on a free port of 127.0.0.1; yields the base URL (…/v1)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
