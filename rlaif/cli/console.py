"""A quiet console: one progress display per stage and the closing table; everything else to the log.

While a command runs, everything libraries print (vLLM and its engine process, transformers,
httpx, Prefect, datasets' bars, warnings) goes to `runs/<name>/logs/<time>-<command>.log` (or
`$RLAIF_HOME/logs/` for commands without a run), by pointing file descriptors 1 and 2 at the log
file: `sys.stdout`, `sys.stderr` and child processes all write there. What we show goes to the
terminal through `terminal()`: a progress bar per unit of work (rows, rate, ETA), a line per note,
the closing table, and errors as one line naming the log. `-v` shows everything on the terminal.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from rlaif.core.progress import Reporter, Task

QUIET_ENV = {  # a user's own setting wins
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",  # the telemetry service logs an ERROR offline
    "DO_NOT_TRACK": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
}


def quiet_environment() -> None:
    for k, v in QUIET_ENV.items():
        os.environ.setdefault(k, v)


def log_path(run_dir: str | Path | None, command: str) -> Path:
    from rlaif.engines.models import rlaif_home

    base = Path(run_dir) / "logs" if run_dir else rlaif_home() / "logs"
    base.mkdir(parents=True, exist_ok=True)
    return base / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{command}.log"


def _terminal(stream, saved: int):
    """A stream on the saved terminal descriptor if `stream` writes to fd 1 or 2, else `stream`
    itself (a test's capture, say)."""
    try:
        fileno = stream.fileno()
    except (AttributeError, OSError, ValueError):
        return stream
    if fileno not in (1, 2):
        return stream
    return open(saved, "w", buffering=1, closefd=False, encoding=getattr(stream, "encoding", None) or "utf-8")


_terminal_stream: ContextVar[Any] = ContextVar("rlaif_terminal", default=None)  # set while a command runs


def terminal():
    """The stream our own output goes to: the terminal while a command runs, else stdout."""
    return _terminal_stream.get() or sys.stdout


def echo(*parts: object) -> None:
    print(*parts, file=terminal(), flush=True)


@contextmanager
def command_output(log: Path, verbose: bool = False) -> Iterator[None]:
    """Route library output to `log` for the duration of a command; restore everything after."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    handler = logging.FileHandler(log)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handlers: list[logging.Handler] = [handler]
    if verbose:
        handlers.append(logging.StreamHandler(sys.stderr))
    root.handlers, root.level = handlers, logging.INFO
    logging.captureWarnings(True)
    redirected, token, stream = not verbose, None, None
    if redirected:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = os.dup(2)
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        out_fd = os.dup(1)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        stream = _terminal(sys.stderr, saved)
        token = _terminal_stream.set(stream)
    try:
        yield
    finally:
        logging.captureWarnings(False)
        handler.close()
        root.handlers, root.level = saved_handlers, saved_level
        if redirected:
            for std in (sys.stdout, sys.stderr):
                try:  # into the log: on a full disk what is left is lost, the terminal has the error
                    std.flush()
                except OSError:
                    pass
            if stream is not sys.stderr:
                stream.close()
            _terminal_stream.reset(token)
            os.dup2(out_fd, 1)
            os.dup2(saved, 2)
            os.close(out_fd)
            os.close(saved)


def console():
    """A rich console on the terminal."""
    from rich.console import Console

    return Console(file=terminal(), highlight=False)


class RichTask(Task):
    def __init__(self, progress, label: str, total: int):
        super().__init__(label, total)
        self.progress, self.id = progress, progress.add_task(label, total=total or None)

    def __call__(self, n: int = 1) -> None:
        super().__call__(n)
        self.progress.advance(self.id, n)

    def grow(self, n: int) -> None:
        super().grow(n)
        self.progress.update(self.id, total=self.total)

    def status(self, text: str) -> None:
        super().status(text)
        self.progress.update(self.id, description=f"{self.label} ({text})")


def _rate_column():
    from rich.progress import ProgressColumn
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task) -> Text:
            return Text(f"{task.speed:.2f}/s" if task.speed else "", style="dim")

    return Rate()


class RichReporter(Reporter):
    """Progress bars and notes on the terminal, and the same in the log."""

    def __init__(self):
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        self.console = console()
        self.progress = Progress(TextColumn("  {task.description}"), BarColumn(bar_width=24), MofNCompleteColumn(), _rate_column(),
                                 TimeElapsedColumn(), TimeRemainingColumn(), console=self.console, transient=False)
        self.log = logging.getLogger("rlaif")

    def task(self, label: str, total: int) -> Task:
        self.log.info("%s: %d to do", label, total)
        if not self.progress.live.is_started:
            self.progress.start()
        return RichTask(self.progress, label, total)

    def note(self, text: str) -> None:
        self.log.info("%s", text)
        self.progress.console.print(f"  {text}")

    def stage(self, name: str) -> None:
        """A rule line before each stage's output."""
        self.stop()
        self.log.info("stage %s", name)
        self.console.rule(f"[bold]{name}", align="left", style="dim")

    def stop(self) -> None:
        if self.progress.live.is_started:
            self.progress.stop()
            for t in list(self.progress.tasks):
                self.progress.remove_task(t.id)
