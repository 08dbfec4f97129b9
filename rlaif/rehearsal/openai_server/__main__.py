"""`python -m rlaif.rehearsal.openai_server --port 0 --state-dir DIR`: the server as a process."""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
from pathlib import Path

from rlaif.rehearsal.openai_server.rules import RULES
from rlaif.rehearsal.openai_server.server import OpenAIServer


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m rlaif.rehearsal.openai_server",
                                description="A strict local stand-in for the hosted OpenAI API.")
    p.add_argument("--port", type=int, default=0, help="0: a free port (see STATE_DIR/server.json)")
    p.add_argument("--state-dir", required=True)
    p.add_argument("--api-key", default="sk-test")
    p.add_argument("--rules", choices=sorted(RULES), default="openai", help="the hosted API's, or vLLM's server's")
    p.add_argument("--models", help="comma-separated model ids (default: the built-in chat, reasoning, completion)")
    p.add_argument("--reasoning-models", help="comma-separated; which of the models are reasoning models")
    p.add_argument("--batch-seconds", type=float, default=0.0, help="delay before each batch line")
    p.add_argument("--retry-after", type=float, default=1.0)
    p.add_argument("--fault", action="append", default=[], metavar="KIND:COUNT[:PATH]",
                   help="e.g. 429:2, 500:1:/batches, disconnect:1")
    p.add_argument("--expire", action="append", default=[], metavar="CUSTOM_ID")
    p.add_argument("--fail", action="append", default=[], metavar="CUSTOM_ID")
    p.add_argument("--vllm-model", help="answer batches with vLLM's run_batch on this model directory")
    p.add_argument("--paused", action="store_true", help="start with batch processing paused")
    a = p.parse_args(argv)
    kw = {}
    if a.models:
        kw["models"] = a.models.split(",")
    if a.reasoning_models:
        kw["reasoning_models"] = a.reasoning_models.split(",")
    faults = [(int(k) if k.isdigit() else k, int(n), *rest) for k, n, *rest in (f.split(":", 2) for f in a.fault)]
    srv = OpenAIServer(rules=a.rules, api_key=a.api_key, batch_seconds=a.batch_seconds, retry_after=a.retry_after, faults=faults,
                       batch_expire=a.expire, batch_fail=a.fail, state_dir=a.state_dir, port=a.port,
                       vllm_model=a.vllm_model, **kw)
    if a.paused:
        srv.pause_batches()
    srv.start()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    info = Path(a.state_dir) / "server.json"
    tmp = info.with_suffix(".tmp")
    tmp.write_text(json.dumps({"base_url": srv.base_url, "port": srv.port, "pid": os.getpid()}))
    os.replace(tmp, info)
    print(f"READY {srv.base_url}", flush=True)
    done.wait()
    srv.stop()


if __name__ == "__main__":
    main()
