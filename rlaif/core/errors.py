"""Errors a user can cause, and how a stage's failure names where it happened.

Anything derived from `RlaifError` is shown as one line (never a traceback; that goes to the
run's log) and ends the command with its `exit_code`. `StageError` says which stage, which model
(generator or judge) and which row (prompt id) a stage was on when it failed.

Exit codes (docs/operations.md, "When things go wrong", lists them for users):

    0   every stage finished; failed rows, if any, within `flow.max_failed_rows`
    1   a bug in rlaif (the traceback is in the log)
    2   the input or the setup is wrong, found before compute: recipe, prompts, model, endpoint,
        key, template, a run directory that cannot be written or is in use by another run
    3   a stage stopped: a server refused a request, the disk filled up, an empty dataset, ...
    4   rows failed: more than `flow.max_failed_rows` (completions or judgements), or a stage
        ended with no usable row; everything that succeeded is kept and a rerun sends the rest
    5   the judge drifted: more of its sentinel preferences flipped since its first check than
        its `max_drift` allows; the run's verdicts are kept, no dataset version is published
    130 interrupted (Ctrl-C); finished shards are kept
    143 terminated (SIGTERM: a scheduler stopping the job, `kill PID`); finished shards are kept
"""

from __future__ import annotations

import errno
import traceback

from pydantic import BaseModel


EXIT_BUG, EXIT_CONFIG, EXIT_STAGE, EXIT_FAILED_ROWS, EXIT_INTERRUPTED, EXIT_TERMINATED = 1, 2, 3, 4, 130, 143
EXIT_DRIFT = 5


class RlaifError(Exception):
    """A mistake in the input or the setup, or a stage that cannot go on: one line, exit code 2."""

    exit_code = EXIT_CONFIG


class ConfigError(RlaifError):
    """A recipe, prompt file, model, endpoint or key that is wrong, found before compute is spent."""


class JudgeDrifted(RlaifError):
    """A judge's sentinel verdicts moved past its `max_drift`: nothing is published (exit 5)."""

    exit_code = EXIT_DRIFT


class StageError(RlaifError):
    """A stage failed: which stage, which model (generator or judge) and which row (prompt id)."""

    exit_code = EXIT_STAGE

    def __init__(self, stage: str, model: str | None, row: str | None, cause: BaseException | str):
        self.stage, self.model, self.row = stage, model, row
        self.cause = cause if isinstance(cause, str) else (
            str(cause) if isinstance(cause, RlaifError) else os_error_message(cause) if isinstance(cause, OSError)
            else f"{type(cause).__name__}: {cause}")
        super().__init__(f"stage {stage!r}, model {model or '?'}, row {row or '?'}: {self.cause}")

    def __reduce__(self):  # survives pickling between Prefect's processes
        return (StageError, (self.stage, self.model, self.row, self.cause))


_FULL = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}
_DENIED = {errno.EACCES, errno.EPERM, errno.EROFS}


def os_error_message(e: OSError) -> str:
    """An OSError as one line a user can act on: what, where, and for a full disk or a read-only
    place, what to do."""
    what = e.strerror or str(e)
    where = f"{e.filename}: " if e.filename else ""
    hint = ""
    if e.errno in _FULL:
        hint = " (the disk or a file size limit is full: free space or use --out elsewhere; a rerun resumes)"
    elif e.errno in _DENIED:
        hint = " (not writable here: fix the permissions or use --out elsewhere)"
    return f"{where}{what}{hint}"


def locate(exc: BaseException) -> tuple[str | None, str | None]:
    """The (model, prompt id) a stage was working on when it raised, from its innermost frames.

    A refusal from an engine carries the request it refused (`exc.request`), which says its member or
    judge and its row: several members share one engine call, so no frame knows which one it was.
    Otherwise the stages loop over typed records, so the frame that raised holds the record it was
    on: a record with a `prompt_id` and the spec it ran (its `name`).
    """
    request = getattr(exc, "request", None)  # an engine's refusal carries the request it refused
    if request is not None and getattr(request, "row", ""):
        return getattr(request, "who", "") or None, request.row
    model = row = None
    for frame, _ in reversed(list(traceback.walk_tb(exc.__traceback__))):
        for value in frame.f_locals.values():
            if row is None and isinstance(value, BaseModel) and isinstance(getattr(value, "prompt_id", None), str):
                row = value.prompt_id
            if model is None and type(value).__name__ in ("GeneratorSpec", "JudgeSpec"):
                model = getattr(value, "name", None)
        if row and model:
            break
    return model, row


class Terminated(KeyboardInterrupt):
    """SIGTERM turned into an exception (the CLI's handler): the command stops as on Ctrl-C, exit 143.
    A KeyboardInterrupt, so everything that lets Ctrl-C through (stages, Prefect) lets it through."""


class stage_errors:
    """`with stage_errors("judge", spec.name):` turns any failure into a StageError with its row.

    Only errors (`Exception`): a signal that stops the process (Ctrl-C, SIGTERM as Prefect's
    `TerminationSignal`) is no stage's failure and passes through as it is."""

    def __init__(self, stage: str, model: str | None = None):
        self.stage, self.model = stage, model

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if exc is None or not isinstance(exc, Exception) or isinstance(exc, StageError):
            return False
        if isinstance(exc, ConfigError):
            return False
        model, row = locate(exc)
        raise StageError(self.stage, model or self.model, row, exc).with_traceback(tb) from exc


def validation_message(source: str, e, prefix: tuple = ()) -> str:
    """A pydantic ValidationError as one line per field: `<source>: field 'a.b': <problem>`."""
    lines = []
    for err in e.errors():
        field = ".".join(str(x) for x in (*prefix, *err["loc"]))
        msg = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
        if field:
            lines.append(f"{source}: field '{field}': {msg}")
        else:  # a check of the whole block (a model validator): its message names the fields
            lines.append(f"{source}: {msg.removeprefix('Value error, ')}")
    return "\n".join(lines)
