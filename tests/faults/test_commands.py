"""Smaller command-line faults: `serve-model MODEL -- ARGS` (as the README writes it) gives vLLM the
ARGS without the `--`; two `rlaif server start` at once leave one server, the one the state records,
and `rlaif server stop` leaves none."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

from rlaif.rehearsal import fault_cases as cases
from rlaif.cli.main import main


def test_serve_model_passes_what_follows_the_double_dash_without_it(tmp_path, monkeypatch):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    started = []
    monkeypatch.setattr(os, "execv", lambda path, cmd: started.append(cmd))  # the one thing not run for real: vLLM
    saved = dict(os.environ)
    try:
        main(["serve-model", str(model), "--port", "8123", "--", "--max-model-len", "512"])
    finally:
        os.environ.clear()
        os.environ.update(saved)
    (cmd,) = started
    assert "--" not in cmd and cmd[-2:] == ["--max-model-len", "512"] and cmd[cmd.index("--port") + 1] == "8123"


def server_cmd(action: str, env: dict):
    return subprocess.Popen([sys.executable, "-m", "rlaif", "server", action], cwd=cases.ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def test_two_server_starts_at_once_leave_one_server_which_stop_stops(tmp_path):
    env = {**os.environ, "RLAIF_HOME": str(tmp_path / "home")}
    env.pop("PREFECT_API_URL", None)
    starts = [server_cmd("start", env) for _ in range(2)]
    servers: set[int] = set()
    try:
        outs = [p.communicate(timeout=300) for p in starts]
        assert [p.returncode for p in starts] == [0, 0], outs
        pids = {int(m) for out, err in outs for m in re.findall(r"pid (\d+)", out + err)}
        servers = {p for p in cases.descendants(0) | cases.descendants(1)
                   if b"prefect" in _cmdline(p) and str(tmp_path).encode() in _environ(p)}
        assert len(pids) == 1, outs
        assert servers <= pids | set().union(*(cases.descendants(p) for p in pids)), (servers, pids)
    finally:
        stop = server_cmd("stop", env)
        stop.communicate(timeout=120)
    deadline = time.time() + 20
    while any(cases.alive(p) for p in servers) and time.time() < deadline:
        time.sleep(0.2)
    left = [p for p in servers if cases.alive(p)]
    for p in left:  # not left running, even when the test fails
        os.kill(p, signal.SIGKILL)
    assert not left


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def _environ(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f.read()
    except OSError:
        return b""
