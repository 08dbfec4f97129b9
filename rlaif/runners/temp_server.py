"""Prefect's temporary server, started so that stopping the command never breaks the run or leaves
the server behind.

Prefect starts its temporary API server (when no server is set) as a plain child process: in the
command's process group, so Ctrl-C in a terminal (SIGINT to the whole foreground group) kills it
under the flow, which then spends minutes failing to report to it before exiting 1; and not tied to
the command, so `kill -9` of the command leaves it running (holding the environment, API keys
included). Here it is started

  * in a session of its own: a signal to the command's terminal reaches the command alone, which
    stops the flow (reporting to a live server), exits 130 or 143, and stops the server at exit
    (Prefect's own atexit hook);
  * behind a watcher of its parent (`python -m rlaif.runners.temp_server PARENT_PID UVICORN_ARGS`):
    once the command is gone, however it went, the server shuts down within a second.

    own_session(server)    make Prefect's SubprocessASGIServer start its process this way
"""

from __future__ import annotations

import os
import runpy
import signal
import subprocess
import sys
import threading
import time

POLL = 0.5  # seconds between looks at the parent
GRACE = 5.0  # seconds uvicorn gets to shut down before the watcher ends the process


def own_session(server) -> None:
    """Start `server` (Prefect's SubprocessASGIServer) in its own session behind a parent watcher.
    The command line and environment are Prefect's own (`_run_uvicorn_command`, Prefect 3.7)."""
    import prefect
    from prefect.settings import get_current_settings

    def run_uvicorn_command() -> subprocess.Popen:
        env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1",
               **get_current_settings().to_environment_variables(exclude_unset=True)}
        args = ["--app-dir", str(prefect.__module_path__.parent), "--factory", "prefect.server.api.server:create_app",
                "--host", "127.0.0.1", "--port", str(server.port), "--log-level", "error", "--lifespan", "on"]
        return subprocess.Popen([sys.executable, "-m", __name__, str(os.getpid()), *args], env=env,
                                start_new_session=True)

    server._run_uvicorn_command = run_uvicorn_command


def watch(parent: int) -> None:
    """Stop this process (uvicorn's graceful SIGTERM, then for good) once `parent` is gone."""
    while os.getppid() == parent:
        time.sleep(POLL)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(GRACE)
    os._exit(1)


def main(argv: list[str]) -> None:
    threading.Thread(target=watch, args=(int(argv[0]),), name="watch-parent", daemon=True).start()
    sys.argv = ["uvicorn", *argv[1:]]
    runpy.run_module("uvicorn", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
