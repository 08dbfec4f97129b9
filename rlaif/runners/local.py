"""The in-process executor: a stage's jobs on this process's engines, one engine at a time.

Jobs are grouped by the engine they run on; an engine already loaded goes first and the stage's
`last` engine (the judge's, during generation) goes last, so a model is loaded once per stage and
the next stage finds its model loaded. The jobs of one engine go to it chunk by chunk (memory: one
chunk), or several chunks in one call up to the engine's `window` (the Batch API's big calls).
"""

from __future__ import annotations

from typing import Any

from rlaif.core.progress import NULL, Reporter
from rlaif.core.store import Manifest, RunStore
from rlaif.engines.base import window
from rlaif.engines.pool import EnginePool, EngineSpec
from rlaif.runners.jobs import Job, ShardedStage, damaged_notes, write


def order(jobs: list[Job], pool: EnginePool, last: str | None) -> list[list[Job]]:
    """Jobs grouped by engine: an engine already loaded first, `last` at the end."""
    groups: dict[str, list[Job]] = {}
    for j in jobs:
        groups.setdefault(j.engine.key if j.engine is not None else "", []).append(j)

    def rank(key: str) -> int:
        engine = groups[key][0].engine
        return 2 if key == last else 0 if engine is None or pool.is_loaded(engine) else 1

    return [groups[k] for k in sorted(groups, key=rank)]


class LocalExecutor:
    """Runs stages here, on `pool`'s engines (a pool of its own, closed with it, when none is given)."""

    def __init__(self, pool: EnginePool | None = None, seed: int = 0):
        self.own = pool is None
        self.pool = pool if pool is not None else EnginePool(seed=seed)

    def first_engine(self, stage: ShardedStage, store: RunStore, jobs: list[Job] | None = None) -> EngineSpec | None:
        """The engine `run` would load first for this stage, if it is a local one."""
        jobs = stage.plan(store) if jobs is None else jobs
        groups = order([j for j in jobs if j.todo], self.pool, getattr(stage, "last", None))
        engine = groups[0][0].engine if groups else None
        return engine if engine is not None and engine.local else None

    def run(self, stage: ShardedStage, store: RunStore, reporter: Reporter = NULL, jobs: list[Job] | None = None,
            follower: Any = None) -> Manifest:
        """Make every shard of `stage` not done yet (`jobs`: its plan, if made already); returns its
        manifest. (`follower`: only the Ray executor interleaves stages; here the follower runs
        after, as its own stage.)"""
        jobs = stage.plan(store) if jobs is None else jobs
        for line in stage.notes(jobs) + damaged_notes(store, jobs):
            reporter.note(line)
        for group in order([j for j in jobs if j.todo], self.pool, getattr(stage, "last", None)):
            engine = self.pool.get(group[0].engine, store.root) if group[0].engine is not None else None
            task = reporter.task("+".join(dict.fromkeys(s.name for j in group for s in j.shards)),
                                 sum(j.rows for j in group))
            wanted, batch, size = window(engine), [], 0
            for job in group:
                inputs = stage.inputs(store, job)
                batch.append((job, inputs))
                size += stage.size(job, inputs)
                if size >= wanted:
                    self._send(stage, store, engine, batch, task)
                    size = 0
            self._send(stage, store, engine, batch, task)
        return stage.manifest(jobs)

    @staticmethod
    def _send(stage: ShardedStage, store: RunStore, engine, batch: list, task) -> None:
        if batch:
            for (job, _), results in zip(batch, stage.compute(engine, batch, task), strict=True):
                write(store, job, results)
            batch.clear()

    def close(self) -> None:
        if self.own:
            self.pool.close()

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
