"""The shape every sharded stage has, so one driver and any executor run it unchanged.

A sharded stage (generation, judging) says from its shards' metadata alone what it would write:

    stage.plan(store)                     -> [Job]   every job, done or not (`job.todo`)
    stage.inputs(store, job)              -> what the job reads (prompts, completions, its old shards)
    stage.size(job, inputs)               -> how many requests it sends (jobs go to an engine up to its window)
    stage.compute(engine, batch, task)    -> for each (job, inputs) of the batch, one record list per shard
    stage.manifest(jobs)                  -> the stage's output, in the stage's own order

A job is one engine call's worth of work for one prompt chunk: the shards it makes (a generation
job makes one shard per member that shares its engine; a judge job makes the chunk's judge shard),
the engine it runs on, and about how many requests it sends. `compute` is pure (no store, no
pool): the executor reads the inputs where the run directory is, sends the job wherever the engine
is, and writes what comes back, each shard atomically (`write`). So the in-process executor
(runners/local.py) and the Ray executor (runners/ray.py) run any stage without knowing what it makes.

A stage may follow another chunk by chunk (`follows`): judging a chunk needs its completion
shards, all of them. The in-process executor runs stages one after the other; the Ray executor
plans a follower's job for a chunk as soon as the chunk's last shard of the stage before is written
(`plan_group`), so judging starts while other chunks are still being generated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import BaseModel

from rlaif.core.progress import Task
from rlaif.core.store import Manifest, RunStore, ShardInfo
from rlaif.engines.pool import EngineSpec


@dataclass
class Shard:
    """One shard a job writes, and its state as an earlier run left it (None: missing)."""

    stage: str  # its folder under the run directory
    key: str
    name: str  # the member or judge that makes it
    info: ShardInfo | None = None
    inputs: list[str] = field(default_factory=list)  # the content hashes of the shards it is made from

    @property
    def stale(self) -> bool:
        """Written from other inputs than today's (a judge shard whose completions were made again).
        A shard that does not say what it was made from (written by hand, or by a tool) is taken as is."""
        return self.info is not None and bool(self.inputs) and bool(self.info.inputs) and self.info.inputs != self.inputs

    @property
    def todo(self) -> bool:
        return self.info is None or self.info.retryable > 0 or self.stale


@dataclass
class Job:
    """One engine call's worth of work for one prompt chunk."""

    group: str  # the prompt chunk's key
    engine: EngineSpec | None  # None: a kind that needs no engine (a reward model loads its own)
    shards: list[Shard]
    rows: int = 0  # about how many requests it sends: a progress bar's total and a batch's size
    detail: Any = None  # what the stage needs to know of the job (the members it answers for)

    @property
    def todo(self) -> bool:
        return any(s.todo for s in self.shards)

    @property
    def label(self) -> str:
        return "+".join(dict.fromkeys(s.name for s in self.shards))

    def describe(self) -> str:
        return f"{self.label} shard of prompt chunk {self.group}"


class ShardedStage(Protocol):
    name: str  # "generate", "judge": what reports and errors call it
    follows: str | None  # the stage whose whole chunk a job needs first, if any

    def plan(self, store: RunStore) -> list[Job]: ...

    def plan_group(self, store: RunStore, group: str, before: list[ShardInfo]) -> Job | None: ...

    def notes(self, jobs: list[Job]) -> list[str]: ...

    def inputs(self, store: RunStore, job: Job) -> Any: ...

    def size(self, job: Job, inputs: Any) -> int: ...

    def compute(self, engine: Any, batch: list[tuple[Job, Any]], task: Task | None = None) -> list[list[list[BaseModel]]]: ...

    def manifest(self, jobs: list[Job]) -> Manifest: ...


def write(store: RunStore, job: Job, results: list[list[BaseModel] | None], worker: dict[str, str] | None = None) -> int:
    """A finished job's shards that had work, each written atomically; returns how many. (A job's
    shard that was done already, beside one that was not, comes back as None and stays as it is.)"""
    written = 0
    for shard, records in zip(job.shards, results, strict=True):
        if records is not None and shard.todo:
            shard.info = store.write(shard.stage, shard.key, records, group=job.group, name=shard.name, worker=worker,
                                     inputs=shard.inputs)
            written += 1
    return written


def damaged_notes(store: RunStore, jobs: list[Job]) -> list[str]:
    """A console line for each shard to make that was found damaged (set aside by the store)."""
    return [line for j in jobs for s in j.shards if s.todo for line in store.damaged_notes(s.stage, [s.key])]


def shards_by_group(jobs: list[Job]) -> dict[str, list[ShardInfo]]:
    """Each chunk's written shards, in the jobs' order."""
    out: dict[str, list[ShardInfo]] = {}
    for j in jobs:
        out.setdefault(j.group, []).extend(s.info for s in j.shards if s.info is not None)
    return out

