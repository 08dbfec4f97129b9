"""Shared fixtures: real bundled models, one loaded engine per model for the session, a tiny 2-layer
model from a real config, fake OpenAI-compatible servers on 127.0.0.1, and the user's home isolated.

The home is isolated here, at import time, before any test module imports prefect or datasets
(tests/isolation.py): HOME, PREFECT_HOME, HF_HOME and the XDG folders are a temporary folder, so the
suite never reads or writes the user's ~/.prefect or ~/.cache, and the session ends with a check
that it wrote nothing there. Tests that load a vLLM engine carry the `engine` marker (given here to
every test that uses the session's engine); `make test-fast` runs the others.
"""

from __future__ import annotations

import json
import os
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from isolation import isolate  # before anything reads HOME

ROOT = Path(__file__).resolve().parents[1]
HOME_WRITES = isolate(ROOT)
_PREFECT_HOME = os.environ["PREFECT_HOME"]
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

import pytest  # noqa: E402

SMOL = "smollm2-135m-instruct"
GEMMA = "gemma3-270m"  # a base model: no chat template
ENGINE_FIXTURES = {"smol_engine", "gemma_engine", "vllm_server", "trained_engines"}  # using one of these loads a vLLM engine


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects
def pytest_collection_modifyitems(items):
    for item in items:
        if ENGINE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.engine)


EARLY_CLOSE: dict = {}  # session fixture name -> closes it; called once no test left to run uses it


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item, nextitem):
    """A session-wide engine or server is closed after the last test (in the order they run:
    file, reversed or random) that uses it, so big ones do not pile up beside a test that loads its
    own (the quickstart's subprocess needs a 4 GiB KV cache)."""
    if not EARLY_CLOSE:
        return
    items = item.session.items
    rest = items[items.index(item) + 1:]
    for name in list(EARLY_CLOSE):
        if not any(name in getattr(i, "fixturenames", ()) for i in rest):
            EARLY_CLOSE.pop(name)()


@pytest.fixture(scope="session", autouse=True)
def home_untouched():
    """The session ends with a check that nothing in this process wrote to the user's home."""
    yield
    assert not HOME_WRITES.writes, f"the suite wrote to the user's home: {sorted(set(HOME_WRITES.writes))[:20]}"


@pytest.fixture(scope="session")
def prefect_home() -> Path:
    return Path(_PREFECT_HOME)


@pytest.fixture(scope="session")
def prefect_harness(prefect_home):
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def smollm2_dir() -> str:
    from rlaif.engines.models import prepare_bundled

    return str(prepare_bundled(SMOL))


@pytest.fixture(scope="session")
def smol_engine(smollm2_dir):
    """SmolLM2-135M-Instruct loaded once for the whole session (max_model_len 1024, 1 GiB KV cache)."""
    from rlaif.engines.vllm_offline import VLLMEngine

    with VLLMEngine(smollm2_dir, SMOL_SETTINGS, label=SMOL) as engine:
        yield engine


def free_port() -> int:
    """A free TCP port on 127.0.0.1 for a server a test starts."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_group(proc, timeout: float = 20) -> None:
    """Stop a process started with `start_new_session=True` and all it started: SIGTERM to its group,
    then SIGKILL if it has not exited within `timeout` seconds. Does nothing once it has exited."""
    import signal
    import subprocess

    if proc.poll() is not None:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout)
            return
        except subprocess.TimeoutExpired:
            continue
    proc.wait()


@pytest.fixture(scope="session")
def vllm_server(smollm2_dir):
    """`rlaif serve-model` (vLLM's own OpenAI server) for SmolLM2 on 127.0.0.1, one for the session:
    waits for /v1/models; stopped after the last test that uses it."""
    import subprocess
    import sys
    import time
    import urllib.request

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "rlaif", "serve-model", SMOL, "--port", str(port)], cwd=ROOT,
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"})
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 300
    while True:
        try:
            with urllib.request.urlopen(url + "/models", timeout=5) as r:
                if SMOL in r.read().decode():
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            stop_group(proc, timeout=0)
            pytest.fail(f"vLLM server did not come up (exit code {proc.poll()})")
        time.sleep(2)
    EARLY_CLOSE["vllm_server"] = lambda: stop_group(proc, timeout=30)
    yield url
    EARLY_CLOSE.pop("vllm_server", None)
    stop_group(proc, timeout=30)


@pytest.fixture(scope="session")
def gemma_engine():
    """Gemma 3 270M, loaded once for the session by the first test that asks for it."""
    from rlaif.engines.models import prepare_bundled
    from rlaif.engines.vllm_offline import VLLMEngine

    engine = VLLMEngine(str(prepare_bundled(GEMMA)), GEMMA_SETTINGS, label=GEMMA)
    EARLY_CLOSE["gemma_engine"] = engine.close
    yield engine
    EARLY_CLOSE.pop("gemma_engine", None)
    engine.close()  # a no-op when closed already


def _settings(max_model_len: int):
    from rlaif.engines.base import EngineSettings

    return EngineSettings(max_model_len=max_model_len, cpu_kv_cache_gb=1)


SMOL_SETTINGS = _settings(1024)
GEMMA_SETTINGS = _settings(2048)


@pytest.fixture
def pool(smol_engine):
    """An engine pool that already holds the session's SmolLM2 engine for SMOL_SETTINGS."""
    from rlaif.engines.pool import EnginePool, EngineSpec

    with EnginePool() as p:
        p.put(EngineSpec(SMOL, None, SMOL_SETTINGS), smol_engine)
        yield p


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


class Recording:
    """An engine that keeps the requests it passes on (a test reads what the stage sent)."""

    def __init__(self, engine):
        self.engine, self.label, self.requests = engine, engine.label, []

    def generate(self, requests, progress=None):
        self.requests += list(requests)
        return self.engine.generate(requests, progress)

    def close(self):
        pass


def write_prompts(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"prompt_id": f"p{i}", "prompt": t}) + "\n" for i, t in enumerate(texts)))
    return path


def chunks(store, prompts, size: int = 256):
    """Prompts written into a run store as chunks: the manifest the stages take."""
    from rlaif.generation.prompt_sets import write_prompt_chunks

    return write_prompt_chunks(prompts, store, size)


class FakeOpenAI(BaseHTTPRequestHandler):
    """Base of the tests' OpenAI-compatible servers on 127.0.0.1 (real HTTP, answers the tests
    choose): a subclass's `reply(body)` returns the status and JSON payload of each request, and
    `models` are the ids GET /models lists (the preflight checks a recipe's models against them)."""

    models: tuple[str, ...] = ("served",)

    def reply(self, body: dict) -> tuple[int, dict]:
        raise NotImplementedError

    def do_GET(self):  # noqa: N802 - /v1/models
        self._send(200, {"object": "list", "data": [{"id": m, "object": "model", "owned_by": "vllm"} for m in self.models]})

    def do_POST(self):  # noqa: N802
        self._send(*self.reply(json.loads(self.rfile.read(int(self.headers["Content-Length"])))))

    def _send(self, status: int, payload: dict) -> None:
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
        server.server_close()
