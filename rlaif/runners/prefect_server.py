"""Prefect's server for the flows: a long-lived local one that commands use while it runs
(`rlaif server start|stop|status`), else the temporary one a command starts for itself.

Without a Prefect server, every command that runs a flow starts Prefect's temporary one (~10 s
on 2 cores) and its flow runs are gone when it exits. `rlaif server start` starts
`prefect server start` on 127.0.0.1 in the background, with its database, log and state under
`$RLAIF_HOME/prefect-server/`; while it runs, every rlaif command sends its flow runs there
(the UI at its address shows them) instead of starting a temporary server. `PREFECT_API_URL`, when
set, wins; `RLAIF_USE_SERVER=0` makes commands ignore the server (a cold-start benchmark, tests).

    rlaif server start [--port N]     start it (or say where it already runs)
    rlaif server status               where it runs, or that it does not
    rlaif server stop                 stop it; its database stays for the next start
"""

from __future__ import annotations

import contextvars
import fcntl
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rlaif.core.errors import RlaifError

log = logging.getLogger(__name__)
STATE = "server.json"  # pid, port, url of the running server


def server_home() -> Path:
    from rlaif.engines.models import rlaif_home

    return rlaif_home() / "prefect-server"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _ours(pid: int) -> bool:
    """The process is a Prefect server (not another process that got the pid of a dead one)."""
    try:
        return b"prefect" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return not Path("/proc/self").exists() and _alive(pid)  # no /proc: trust the pid
    except OSError:
        return False


def _healthy(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as r:
            return r.status == 200
    except OSError:
        return False


def _read_state() -> dict | None:
    """What `start` wrote (pid, port, url), or None when there is no readable state."""
    try:
        return json.loads((server_home() / STATE).read_text())
    except (OSError, ValueError):
        return None


def status() -> dict | None:
    """The running server's state (pid, port, url), or None; a state left by a dead server is removed."""
    path = server_home() / STATE
    state = _read_state()
    if state is None:
        return None
    if not _ours(state["pid"]):
        path.unlink(missing_ok=True)
        return None
    return state if _healthy(state["url"]) else None


def api_url() -> str | None:
    """The server a command should send its flow runs to: None when PREFECT_API_URL is set (it
    wins), when RLAIF_USE_SERVER=0, or when no server runs."""
    if os.environ.get("PREFECT_API_URL") or os.environ.get("RLAIF_USE_SERVER", "1") == "0":
        return None
    state = status()
    return state["url"] if state else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(port: int | None = None, timeout: float = 120) -> dict:
    """Start the server in the background (its own session: it outlives this command). Two starts at
    once take turns (a lock beside the state): the second finds the first's server, never starts one
    the state does not record."""
    home = server_home()
    home.mkdir(parents=True, exist_ok=True)
    with open(home / "start.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or when this process dies
        running = status()
        if running:
            return {**running, "already": True}
        return _start(home, port, timeout)


def _start(home: Path, port: int | None, timeout: float) -> dict:
    port = port or _free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(home / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "DO_NOT_TRACK": "1"}
    env.pop("PREFECT_API_URL", None)
    log = home / "server.log"
    with log.open("a") as out:
        proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                                 "--port", str(port)], env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + timeout
    while not _healthy(url, timeout=1.0):
        if proc.poll() is not None:
            raise RlaifError(f"the Prefect server exited with code {proc.returncode} while starting; see {log}")
        if time.monotonic() > deadline:
            _stop_group(proc.pid)
            raise RlaifError(f"the Prefect server did not answer on {url} within {timeout:.0f} s; see {log}")
        time.sleep(0.3)
    state = {"pid": proc.pid, "port": port, "url": url, "log": str(log), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    (home / STATE).write_text(json.dumps(state))
    return state


def _stop_group(pid: int, timeout: float = 20) -> None:
    """SIGTERM the server's process group (it was started in a session of its own), then SIGKILL."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        try:  # our child when started by this process: reap it
            if os.waitpid(pid, os.WNOHANG)[0]:
                return
        except ChildProcessError:
            pass
        time.sleep(0.2)
    if _alive(pid):
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def stop() -> dict | None:
    """Stop the running server; returns the state it had, or None if none ran."""
    path = server_home() / STATE
    state = _read_state()
    if state is None:
        return None
    if _ours(state["pid"]):
        _stop_group(state["pid"])
    path.unlink(missing_ok=True)
    return state


# ----------------------------------------------------------------------------- a command's own server
# Prefect's 20 s for its temporary server to answer is too short while a model loads beside it on
# 2 shared cores: the bench's first run timed out there (2026-11-24) with the engine already loaded.
STARTUP_TIMEOUT = 300


@contextmanager
def long_lived_server() -> Iterator[None]:
    """Point Prefect at `rlaif server`'s server while the block runs, if one runs."""

    url = api_url()
    if url is None:
        yield
        return
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: url}):
        yield


@contextmanager
def prefect_server_in_background() -> Iterator[None]:
    """Start Prefect's temporary server in a thread while the block runs, unless a server is set
    (`PREFECT_API_URL`) or the temporary one already runs; wait for it when the block ends."""
    from prefect.settings import (PREFECT_API_URL, PREFECT_SERVER_ALLOW_EPHEMERAL_MODE,
                                  PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS)

    if PREFECT_API_URL.value() or not PREFECT_SERVER_ALLOW_EPHEMERAL_MODE.value():
        yield
        return
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()  # the instance Prefect's client uses (one per process)
    if server.running:
        yield
        return
    from rlaif.runners.temp_server import own_session

    own_session(server)  # its own session, watching this process: Ctrl-C or kill -9 leave nothing behind
    log.info("starting Prefect's temporary server in the background")
    failed: list[BaseException] = []

    def start() -> None:
        try:
            server.start(timeout=max(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value(), STARTUP_TIMEOUT))
        except BaseException as e:  # raised in this thread when the block ends
            failed.append(e)

    thread = threading.Thread(target=contextvars.copy_context().run, args=(start,), name="prefect-server", daemon=True)
    thread.start()
    try:
        yield
    finally:
        thread.join()
    if failed:
        raise failed[0]

