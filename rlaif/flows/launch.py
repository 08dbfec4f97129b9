"""How a command runs its flow: no fixed cost when there is nothing to do, little when there is.

An unchanged rerun should return in seconds, and a first run should cost what its stages cost.
Two things stood in the way: Prefect's temporary API server (~10 s to start, in every command
that runs a flow) and loading a model (the judge's or a member's), each waiting for the other.

    run_flow(flow, recipe, out, ...)

1. **Nothing to do: no flow at all.** Every stage says from its shards' metadata whether it has
   work (a task's cache key exists only when it has none, flows/caching.py). So the flow's body
   first runs directly, outside Prefect: a task whose stage is done is just called (it reads its
   shards' metadata and returns its manifest), and the first task with work stops the attempt
   (`Pending`). All done: the command prints the same summary as the flow would, having started
   no server, loaded no engine and imported no ML library. What the attempt shows on the terminal
   is held back until it succeeds, so a command that goes on to run the flow shows each line once.
2. **Work to do: a server that runs already, or one started while the first engine loads.** A
   server started by `rlaif server start` (flows/server.py) is used while it runs, unless
   `PREFECT_API_URL` names another. Without either, Prefect's temporary server is started in a
   background thread while this thread loads the engine the pending stage needs first (the engine
   pool is shared with the flow, which then finds it loaded). The flow runs once both are ready.
"""

from __future__ import annotations

import contextvars
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

from rlaif.core.progress import Reporter, Task
from rlaif.engines.pool import EnginePool, EngineSpec

log = logging.getLogger(__name__)
# Prefect's 20 s for its temporary server to answer is too short while a model loads beside it on
# 2 shared cores: the bench's first run timed out there (2026-11-24) with the engine already loaded.
STARTUP_TIMEOUT = 300
_direct = False  # set while a flow's body runs outside Prefect (pipeline.call reads it)


class Pending(Exception):
    """A task whose stage has work: the flow must run. Carries the task and its parameters."""

    def __init__(self, task: str, params: dict[str, Any]):
        super().__init__(task)
        self.task, self.params = task, params


def direct() -> bool:
    return _direct


class Held(Reporter):
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


def settled(flow, *args: Any, **kwargs: Any) -> Any:
    """The flow's result computed without Prefect if every stage it runs is done; else `Pending`."""
    from rlaif.flows import pipeline

    global _direct
    outer, held = pipeline.reporter(), Held()
    pipeline.set_reporter(held)
    _direct = True
    try:
        result = flow.fn(*args, **kwargs)
    except Pending:
        raise  # the flow runs and shows all of it
    except BaseException:
        held.replay(outer)  # what led to the error, as the flow would have shown it
        raise
    else:
        held.replay(outer)
        return result
    finally:
        _direct = False
        pipeline.set_reporter(outer)


def run_flow(flow, recipe, *args: Any, preflight: Callable[[], None] | None = None, rerun: bool = False,
             **kwargs: Any) -> Any:
    """Run `flow(recipe, *args, **kwargs)`: directly if nothing is left to do, else as a Prefect
    flow, with Prefect's temporary server starting while the first engine loads.

    `preflight` (flows/preflight.py: models, endpoints, keys, prompts and their lengths) runs first,
    before any compute, unless `rerun` (this recipe already ran in this run directory): then it
    runs only if the direct attempt finds work or fails, so an unchanged rerun does not pay for its
    tokenizer loads and a mistake is still reported whole before any engine loads."""
    from rlaif.flows import pipeline

    if preflight is not None and not rerun:
        preflight()
        preflight = None
    try:
        return settled(flow, recipe, *args, **kwargs)
    except Pending as p:
        pending = p
    except Exception:
        if preflight is not None:
            preflight()  # every mistake at once, if the failure came from one
        raise
    if preflight is not None:
        preflight()
    outer = pipeline.shared_pool()
    with (nullcontext(outer) if outer is not None else EnginePool(seed=recipe.seed)) as pool, \
            pipeline.shared_engines(pool), long_lived_server():
        with prefect_server_in_background():
            engine = first_engine(pending, recipe, pool)
            if engine is not None:
                pool.get(engine)
        return flow(recipe, *args, **kwargs)


@contextmanager
def long_lived_server() -> Iterator[None]:
    """Point Prefect at `rlaif server`'s server while the block runs, if one runs (flows/server.py)."""
    from rlaif.flows.server import api_url

    url = api_url()
    if url is None:
        yield
        return
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: url}):
        yield


def first_engine(pending: Pending, recipe, pool: EnginePool) -> EngineSpec | None:
    """The local engine the pending stage loads first, as that stage orders its work."""
    p = pending.params
    if pending.task == "generate":
        from rlaif.core.store import RunStore
        from rlaif.generation.ensemble import engine_order, plan_generation

        units = plan_generation(p["prompts"], recipe.generators, RunStore(p["out"]), recipe.models_per_prompt,
                                recipe.seed)
        order = engine_order([u for u in units if u.todo], recipe.engine, pool, p.get("last"))
        spec = order[0] if order else None
    elif pending.task == "judge":
        spec = p["spec"].engine_spec(recipe.engine)
    else:
        spec = None
    return spec if spec is not None and spec.local else None


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
    from rlaif.flows.temp_server import own_session

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

