"""How a command runs its flow: no fixed cost when there is nothing to do, little when there is.

An unchanged rerun should return in seconds, and a first run should cost what its stages cost.
Two things stood in the way: Prefect's temporary API server (~10 s to start, in every command
that runs a flow) and loading a model (the judge's or a member's), each waiting for the other.

    run_flow(flow, recipe, out, ...)

1. **Nothing to do: no flow at all.** Every stage says from its shards' metadata whether it has
   work (a task's cache key exists only when it has none, flows/steps.py). So the flow's body
   first runs directly, outside Prefect: a task whose stage is done is just called (it reads its
   shards' metadata and returns its manifest), and the first task with work stops the attempt
   (`Pending`). All done: the command prints the same summary as the flow would, having started
   no server, loaded no engine and imported no ML library. What the attempt shows on the terminal
   is held back until it succeeds, so a command that goes on to run the flow shows each line once.
2. **Work to do: a server that runs already, or one started while the first engine loads.** A
   server started by `rlaif server start` (runners/prefect_server.py) is used while it runs, unless
   `PREFECT_API_URL` names another. Without either, Prefect's temporary server is started in a
   background thread while this thread loads the engine the pending stage needs first (the engine
   pool is shared with the flow, which then finds it loaded). The flow runs once both are ready.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

from rlaif.core.progress import Reporter, Task
from rlaif.engines.pool import EnginePool
from rlaif.runners.context import run_context, using
from rlaif.flows.pipeline import Pending
from rlaif.runners.prefect_server import long_lived_server, prefect_server_in_background

log = logging.getLogger(__name__)


class HeldReporter(Reporter):
    """A reporter that keeps what it is told, to pass on (`replay`) once the attempt succeeds."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def task(self, label: str, total: int) -> Task:
        t = Task(label, total)
        self.calls.append(("task", t))
        return t

    def note(self, text: str) -> None:
        self.calls.append(("note", text))

    def stage(self, name: str) -> None:
        self.calls.append(("stage", name))

    def replay(self, to: Reporter) -> None:
        for kind, value in self.calls:
            if kind == "task":
                to.task(value.label, value.total)(value.done)
            else:
                getattr(to, kind)(value)


def without_prefect(flow, *args: Any, **kwargs: Any) -> Any:
    """The flow's result computed without Prefect if every stage it runs is done; else `Pending`."""
    outer, held = run_context().reporter, HeldReporter()
    with using(reporter=held, attempt=True):
        try:
            result = flow.fn(*args, **kwargs)
        except Pending:
            raise  # the flow runs and shows all of it
        except BaseException:
            held.replay(outer)  # what led to the error, as the flow would have shown it
            raise
    held.replay(outer)
    return result


def run_flow(flow, recipe, *args: Any, preflight: Callable[[], None] | None = None, rerun: bool = False,
             **kwargs: Any) -> Any:
    """Run `flow(recipe, *args, **kwargs)`: directly if nothing is left to do, else as a Prefect
    flow, with Prefect's temporary server starting while the first engine loads.

    `preflight` (recipe/preflight.py: models, endpoints, keys, prompts and their lengths) runs first,
    before any compute, unless `rerun` (this recipe already ran in this run directory): then it
    runs only if the direct attempt finds work or fails, so an unchanged rerun does not pay for its
    tokenizer loads and a mistake is still reported whole before any engine loads."""
    if preflight is not None and not rerun:
        preflight()
        preflight = None
    try:
        return without_prefect(flow, recipe, *args, **kwargs)
    except Pending as p:
        pending = p
    except Exception:
        if preflight is not None:
            preflight()  # every mistake at once, if the failure came from one
        raise
    if preflight is not None:
        preflight()
    outer = run_context().pool
    with (nullcontext(outer) if outer is not None else EnginePool(seed=recipe.seed)) as pool, \
            using(pool=pool), long_lived_server():
        with prefect_server_in_background():
            engine = first_engine(pending, recipe, *args)
            if engine is not None:
                pool.get(engine)
        return flow(recipe, *args, **kwargs)


def first_engine(pending: Pending, recipe, out: str, *_: Any):
    """The local engine the pending stage loads first, as that stage orders its work."""
    from rlaif.runners.context import ray_address

    if ray_address():
        return None  # the cluster's workers load their own
    where = dict(recipe=pending.ctx.recipe, out=pending.ctx.out) if pending.ctx is not None else dict(recipe=recipe, out=out)
    with using(**where) as ctx:
        return pending.step.first_engine(ctx)
