"""A self-hosted endpoint on 127.0.0.1 whose faults a test sets between runs (the strict server of
rlaif.rehearsal.openai_server under vLLM's rules, steered through its `fault` and `responder`
switches), and the helpers the fault tests share: a tiny endpoint-backed recipe, `rlaif` as a child
process (with Prefect's test server, so a child starts none), and file stamps.

    Faulty.gen / Faulty.judge   what generation / judge requests get: "ok", an HTTP status
                                (400, 401, 503, ...) or "drop" (the connection closed, no answer)
    Faulty.models_status        what GET /models gets: 200 or an HTTP status
    Faulty.only                 if set, only requests whose text holds it get the fault
    Faulty.pad                  (text, n): answers to prompts holding `text` get n more characters
    Faulty.hold                 (kind, text): requests of that kind whose text holds `text` wait
                                until `Faulty.release` is set
    Faulty.seen                 every request as it arrives: ("gen" | "judge", model, text)

Generation answers "<text> from <model>"; the judge rates gen-a's answers 5 and others 3, with
log-probs, so every prompt makes one preference pair.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from rlaif.rehearsal.fault_cases import recipe_file
from rlaif.rehearsal.openai_server import ApiError
from tests.support.endpoints import asked, judging, said, serving, verdict
from tests.support.helpers import ROOT

MESSAGES = {400: "prompt is malformed", 401: "Incorrect API key provided", 403: "forbidden", 404: "no such model"}


class Faulty:
    """The faults and the record of one test's endpoint (class-level: a test sets them between runs)."""

    gen: str | int = "ok"
    judge: str | int = "ok"
    models_status: int = 200
    only: str | None = None
    pad: tuple[str, int] | None = None
    hold: tuple[str, str] | None = None
    release = threading.Event()
    seen: list[tuple[str, str, str]] = []
    served = ("gen-a", "gen-b", "judge")

    @classmethod
    def reset(cls) -> None:
        cls.gen, cls.judge, cls.models_status, cls.only, cls.hold, cls.pad = "ok", "ok", 200, None, None, None
        cls.release.set()  # a request still held from before goes
        cls.release = threading.Event()
        cls.seen = []

    @classmethod
    def fault(cls, path: str, body: dict | None):
        """The server's `fault` switch: called with each request as it arrives."""
        if body is None:  # GET /models
            return cls._error(cls.models_status) if cls.models_status != 200 else None
        text, kind = asked(body), "judge" if judging(body) else "gen"
        cls.seen.append((kind, body["model"], text))
        if cls.hold and cls.hold[0] == kind and cls.hold[1] in text:
            cls.release.wait(120)
        fault = cls.judge if kind == "judge" else cls.gen
        if fault == "ok" or (cls.only is not None and cls.only not in text):
            return None
        return "disconnect" if fault == "drop" else cls._error(fault)

    @staticmethod
    def _error(status: int) -> ApiError:
        if status in MESSAGES:
            return ApiError(status, MESSAGES[status])
        return ApiError(status, "upstream overloaded", type="server_error")

    @classmethod
    def respond(cls, body: dict):
        """The server's `responder`."""
        text = asked(body)
        if judging(body):
            return verdict(5 if "from gen-a" in text else 3)
        padding = "x" * cls.pad[1] if cls.pad and cls.pad[0] in text else ""
        return said(f"{text} from {body['model']}{padding}")

    @classmethod
    @contextmanager
    def serving(cls):
        """The endpoint on a free port of 127.0.0.1; yields its base URL (…/v1)."""
        with serving(cls.respond, models=cls.served, fault=cls.fault) as srv:
            yield srv.base_url


def sent(kind: str) -> list[str]:
    """The texts of the requests of one kind ("gen" or "judge") the server received."""
    return [text for k, _, text in Faulty.seen if k == kind]


PROMPTS = ["Say one.", "Say two.", "Say three.", "Say four."]


def recipe(tmp: Path, url: str, prompts: list[str] = PROMPTS, **extra) -> Path:
    """Two endpoint members and an endpoint judge, one prompt per chunk, no Prefect retries."""
    source = tmp / "prompts.jsonl"
    if not source.exists():
        source.write_text("".join(f'{{"prompt_id": "p{i}", "prompt": "{t}"}}\n' for i, t in enumerate(prompts)))
    endpoint = {"base_url": url, "max_retries": 0, "max_concurrency": 1}
    data = {"name": "faults", "shard_size": 1, "prompts": {"source": str(source)},
            "hygiene": {"near_dup_threshold": None},
            "generators": [{"name": m, "model": m, "endpoint": endpoint, "sampling": {"max_tokens": 8}}
                           for m in ("gen-a", "gen-b")],
            "judge": {"name": "uf", "model": "judge", "aspects": ["helpfulness"], "endpoint": endpoint},
            "binarize": {"test_fraction": 0},
            "flow": {"retries": 0, "retry_delay_seconds": 0, "retry_jitter_factor": 0}}
    return recipe_file(tmp, data, extra)


def prefect_env(tmp: Path) -> dict:
    """The environment of an `rlaif` child: Prefect's test server of this session (so the child
    starts none), its own Prefect home."""
    from prefect.settings import PREFECT_API_URL

    return {**os.environ, "PREFECT_HOME": str(tmp / "prefect-child"), "PREFECT_API_URL": PREFECT_API_URL.value(),
            "COLUMNS": "200"}


def rlaif(*args: str, env: dict, preexec_fn=None, wait: bool = True, timeout: float = 300):
    """`python -m rlaif ARGS` as its own process group (so a kill reaches all of it)."""
    cmd = [sys.executable, "-m", "rlaif", *args]
    if not wait:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True, preexec_fn=preexec_fn,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
                          preexec_fn=preexec_fn)


def wait_for(what, proc, timeout: float = 300, step: float = 0.02):
    """Poll `what()` until it is true; fail if the process ends first or time runs out."""
    deadline = time.time() + timeout
    while not what():
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"the run ended (exit {proc.returncode}) before the kill point:\n{err[-3000:]}")
        if time.time() > deadline:
            raise AssertionError("the kill point was not reached in time")
        time.sleep(step)


def stamps(root: Path, pattern: str) -> dict[str, tuple[int, int]]:
    """(inode, mtime) of each file: a rewritten file gets a new inode (written atomically)."""
    return {str(p.relative_to(root)): (p.stat().st_ino, p.stat().st_mtime_ns) for p in root.glob(pattern) if p.is_file()}


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error:")]


@pytest.fixture
def url(prefect_harness):
    """A fresh Faulty server on 127.0.0.1 for one test (imported by the fault and kill tests)."""
    Faulty.reset()
    with Faulty.serving() as u:
        yield u
    Faulty.release.set()
