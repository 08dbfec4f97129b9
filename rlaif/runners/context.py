"""One flow run's context: what every stage of the run shares, in one small immutable object.

    RunContext(out, recipe, pool, executor, reporter, attempt)

The command line sets what it owns (the progress display; a test or bench sets an engine pool it
shares between flows) with `using(...)`; a flow run adds its run directory, recipe and executor
(`flow_run`), and every stage reads `run_context()`. Nothing else holds run state: the context lives
in one context variable, so nested flows (a refresh that runs the pipeline) share their parent's
engines, and a thread or Prefect task started from the flow sees the flow's context.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace
from typing import Any

from rlaif.core.progress import NULL, Reporter
from rlaif.core.store import RunStore
from rlaif.engines.base import EngineSettings
from rlaif.engines.pool import EnginePool

ADDRESS_ENV = "RAY_ADDRESS"


@dataclass(frozen=True)
class RunContext:
    out: str = ""  # the run directory
    recipe: Any = None  # the run's recipe (rlaif's Recipe; any object with its fields in a library call)
    pool: EnginePool | None = None  # this process's loaded engines
    executor: Any = None  # runners.local.LocalExecutor or runners.ray.RayExecutor: where stage jobs run
    reporter: Reporter = NULL
    attempt: bool = False  # the flow's body run outside Prefect to see if all is done (flows/launch.py)
    ray_address: str | None = None  # `--ray ADDRESS`; else RAY_ADDRESS
    engine: EngineSettings | None = None  # the recipe's `engine:` block: what every local engine defaults to
    seed: int = 0  # the recipe's

    @property
    def store(self) -> RunStore:
        return RunStore(self.out)

    @property
    def on_ray(self) -> bool:
        return self.executor is not None and getattr(self.executor, "distributed", False)


_current: ContextVar[RunContext] = ContextVar("rlaif_run", default=RunContext())


def run_context() -> RunContext:
    return _current.get()


@contextmanager
def using(**changes: Any) -> Iterator[RunContext]:
    """The current context with `changes`, while the block runs."""
    token = _current.set(replace(_current.get(), **changes))
    try:
        yield _current.get()
    finally:
        _current.reset(token)


def ray_address(ctx: RunContext | None = None) -> str | None:
    """The cluster to use: `--ray ADDRESS`, else RAY_ADDRESS, else None (run in this process)."""
    ctx = ctx or run_context()
    return ctx.ray_address or os.environ.get(ADDRESS_ENV) or None


def free_engines(ctx: RunContext) -> None:
    """Before this process takes the accelerator (training, HF models): the engines loaded here are
    released, and so are the loaded workers a Ray executor kept for the run's next stage."""
    from rlaif.engines.pool import free_accelerator

    release = getattr(ctx.executor, "release_kept", None)
    if release is not None:
        release()
    free_accelerator(ctx.pool)


@contextmanager
def flow_run(recipe: Any, out: str) -> Iterator[RunContext]:
    """A flow run's context: its run directory and recipe, an engine pool (the one set by `using`,
    or one of its own, closed at the end) and an executor (Ray when an address is set). A flow
    inside another flow run shares the outer one's pool and executor."""
    outer = run_context()
    mine = dict(out=out, recipe=recipe, engine=recipe.engine, seed=recipe.seed)
    if outer.executor is not None:
        with using(**mine) as ctx:
            yield ctx
        return
    from rlaif.runners.local import LocalExecutor

    pool = outer.pool if outer.pool is not None else EnginePool(seed=recipe.seed)
    address = ray_address(outer)
    try:
        if address:
            from rlaif.runners.ray import RayExecutor

            with RayExecutor(address) as executor, using(**mine, pool=pool, executor=executor) as ctx:
                yield ctx
        else:
            with using(**mine, pool=pool, executor=LocalExecutor(pool)) as ctx:
                yield ctx
    finally:
        if outer.pool is None:
            pool.close()
