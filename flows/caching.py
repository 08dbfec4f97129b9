"""Prefect task caching keyed by content hashes, results kept in the run directory, stage errors.

A task's cache key is the hash of the records it reads (prompt hashes, completion ids and texts,
judgement records) and of the settings of its own stage only (`GeneratorSpec.settings_hash()`,
`JudgeSpec.settings_hash()`, the BinarizeSpec, the DPOSpec). So a rerun with nothing changed is
served from the cache, and a change to one judge setting changes the judge key and, through the
judgements, every key after it, but not the generation key.

Cached results are written as JSON under `<run dir>/.prefect/results/`, next to the stage shards:
the run directory stays self-contained and the shards stay the source of truth (the stages still
skip any shard already on disk, so a cache miss costs a read, not a recomputation).
"""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from generation.records import Completion, Prompt, content_hash

CACHE_VERSION = 1  # bump when what a task returns changes shape: old cache entries are then missed
CACHED = dict(persist_result=True, result_serializer="json")


def result_storage(out: str | Path) -> Path:
    """Where task results go: a plain path, which Prefect turns into a LocalFileSystem block."""
    return Path(out).resolve() / ".prefect" / "results"


def _key(stage: str, *parts: Any) -> str:
    return f"{stage}-{content_hash(CACHE_VERSION, *parts)}"


def prompt_keys(prompts: list[Prompt]) -> list[tuple[str, str]]:
    return [(p.prompt_id, p.hash) for p in prompts]


def completion_keys(completions: list[Completion]) -> list[tuple]:
    # the text and error too: a row that failed and was regenerated since is a new input
    return [(c.completion_id, c.text, c.error) for c in completions]


def generate_key(ctx: Any, params: dict) -> str:
    r = params["recipe"]
    return _key("generate", prompt_keys(params["prompts"]), [(g.name, g.settings_hash()) for g in r.generators],
                r.models_per_prompt, r.seed, r.shard_size)


def judge_key(ctx: Any, params: dict) -> str:
    spec = params["spec"]
    return _key(f"judge-{spec.name}", spec.settings_hash(), prompt_keys(params["prompts"]),
                completion_keys(params["completions"]), params["recipe"].shard_size, params["recipe"].seed)


def publish_key(ctx: Any, params: dict) -> str:
    judgements = params["judgements"]
    return _key("publish", params["spec"], params["hygiene"], prompt_keys(params["prompts"]),
                completion_keys(params["completions"]), judgements, str(params["out"]))


def train_key(ctx: Any, params: dict) -> str:
    return _key("train", type(params["spec"]).__name__, params["spec"], params["dataset_hash"], str(params["path"]))  # the version's inputs


class StageError(RuntimeError):
    """A stage failed: which stage, which model (generator or judge) and which row (prompt id)."""

    def __init__(self, stage: str, model: str | None, row: str | None, cause: BaseException | str):
        self.stage, self.model, self.row = stage, model, row
        self.cause = cause if isinstance(cause, str) else f"{type(cause).__name__}: {cause}"
        super().__init__(f"stage {stage!r}, model {model or '?'}, row {row or '?'}: {self.cause}")

    def __reduce__(self):  # so it survives pickling between Prefect's processes
        return (StageError, (self.stage, self.model, self.row, self.cause))


def _named(value: Any) -> str | None:
    return getattr(value, "name", None) if isinstance(value, BaseModel) else None


def locate(exc: BaseException) -> tuple[str | None, str | None]:
    """The (model, prompt id) a stage was working on when it raised, from its innermost frames.

    The stages loop over typed records, so the frame that raised holds the record it was on: a
    `Prompt` or `Completion` (its prompt id) and the spec it ran (its name). Nothing to maintain
    in the stages themselves.
    """
    model = row = None
    for frame, _ in reversed(list(traceback.walk_tb(exc.__traceback__))):
        for value in frame.f_locals.values():
            if row is None and isinstance(value, (Prompt, Completion)):
                row = value.prompt_id
            if model is None and type(value).__name__ in ("GeneratorSpec", "JudgeSpec"):
                model = _named(value)
        if row and model:
            break
    return model, row


class stage_errors:
    """`with stage_errors("judge", spec.name):` turns any failure into a StageError with its row."""

    def __init__(self, stage: str, model: str | None = None):
        self.stage, self.model = stage, model

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if exc is None or isinstance(exc, (StageError, KeyboardInterrupt, SystemExit)):
            return False
        model, row = locate(exc)
        raise StageError(self.stage, model or self.model, row, exc).with_traceback(tb) from exc

