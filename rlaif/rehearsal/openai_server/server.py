"""The server: its settings, lifecycle, request log and state directory; the rest is in the mixins
(handler.py, chat.py, faults.py, batches.py). See the package docstring."""

from __future__ import annotations

import copy
import json
import os
import threading
from collections import Counter
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

from rlaif.rehearsal.openai_server.batches import TERMINAL, Batches
from rlaif.rehearsal.openai_server.chat import Chat, default_responder
from rlaif.rehearsal.openai_server.faults import Faults
from rlaif.rehearsal.openai_server.handler import Http, _Handler, _Server
from rlaif.rehearsal.openai_server.rules import CHAT_MODELS, COMPLETION_MODELS, REASONING_MODELS, RULES, Rules


@dataclass
class Settings:
    """What a test (or `rlaif rehearse`) may set on the server, each as a keyword of `OpenAIServer`."""

    rules: str | Rules = "openai"  # "openai", "vllm", or a Rules of its own
    models: Any = None  # the models served (default: by the rules)
    reasoning_models: Any = None
    completion_models: Any = None
    api_key: str = "sk-test"
    responder: Any = None  # (model, messages | prompt, body) -> text or Reply
    certain: bool = False  # every token at logprob 0, no alternatives
    delay: float = 0.0  # seconds each answer waits
    faults: Any = ()  # (kind, count[, path part]), ...
    fault: Any = None  # callable(path, body) -> kind | None
    retry_after: float = 1.0
    reasoning_tokens: int = 16
    batch_seconds: float = 0.0
    batch_expire: Any = ()
    batch_fail: Any = ()
    state_dir: Any = None
    port: int = 0
    vllm_model: str | None = None
    # what a response names as having answered: a model asked for by its alias answers as its snapshot
    # (the API's `gpt-4o` answers as `gpt-4o-2024-08-06`), with the provider's system_fingerprint
    snapshots: Any = None  # {alias: snapshot}
    fingerprint: str = "fp_test"


class OpenAIServer(Http, Chat, Faults, Batches):
    """The server; see the package docstring. Use as a context manager, or start()/stop(). Its
    keywords are `Settings`' fields."""

    def __init__(self, **settings: Any):
        s = Settings(**settings)  # an unknown keyword is a TypeError, as for any function
        models, reasoning_models, completion_models = s.models, s.reasoning_models, s.completion_models
        api_key, responder, certain, delay, faults, fault = s.api_key, s.responder, s.certain, s.delay, s.faults, s.fault
        retry_after, reasoning_tokens, batch_seconds, vllm_model = s.retry_after, s.reasoning_tokens, s.batch_seconds, s.vllm_model
        batch_expire, batch_fail, state_dir, port = s.batch_expire, s.batch_fail, s.state_dir, s.port
        self.rules = RULES[s.rules] if isinstance(s.rules, str) else s.rules
        hosted = self.rules.owned_by != "vllm"  # vLLM serves the models it is given, none of them reasoning
        if models is None:
            models = CHAT_MODELS + REASONING_MODELS + COMPLETION_MODELS if hosted else ("served",)
        if reasoning_models is None:
            reasoning_models = REASONING_MODELS if hosted else ()
        if completion_models is None:
            completion_models = COMPLETION_MODELS if hosted else ()
        self.models, self.api_key = list(models), api_key
        self.reasoning_models, self.completion_models = set(reasoning_models), set(completion_models)
        self.responder = responder or default_responder
        self.snapshots, self.fingerprint = dict(s.snapshots or {}), s.fingerprint
        self.certain, self.delay = certain, delay
        self.keys: list[str] = []  # the Authorization header of each request, in memory only
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
