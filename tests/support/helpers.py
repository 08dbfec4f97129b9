"""Names and small helpers the tests share: the checkout, the bundled models and their engine
settings, free ports, process groups, prompt files and chunks, and an engine that records requests."""

from __future__ import annotations

import json
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SMOL = "smollm2-135m-instruct"
GEMMA = "gemma3-270m"  # a base model: no chat template


def _settings(max_model_len: int):
    from rlaif.engines.base import EngineSettings

    return EngineSettings(max_model_len=max_model_len, cpu_kv_cache_gb=1)


SMOL_SETTINGS = _settings(1024)
GEMMA_SETTINGS = _settings(2048)


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
    from rlaif.prompts.prompt_sets import write_prompt_chunks

    return write_prompt_chunks(prompts, store, size)
