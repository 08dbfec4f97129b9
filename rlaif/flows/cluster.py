"""Ray: the same recipe on a cluster, one shard at a time, members and judge side by side.

`rlaif run RECIPE --ray ADDRESS` (or RAY_ADDRESS in the environment; `--ray local` starts a Ray on
this machine) runs the generation and judge stages here instead of in the flow's process. Without
it nothing changes: the stages run in-process, as always.

Why Ray directly, under the Prefect flow, and not prefect-ray's task runner: a worker must load its
model once and then take shard after shard (a 72B judge loads in minutes), which is a Ray actor;
prefect-ray runs each Prefect task as a stateless Ray task, so every shard would load its model
again, and every shard would be a Prefect task run with its own persisted result. Here Prefect keeps
one task per stage (its cache and retries unchanged) and that task drives the cluster.

    pools      one per engine (model + engine settings; a member's and the judge's are one pool
               when they match): `replicas` Ray actors (`EngineSettings.replicas`, "auto": as many
               as fit), each asking for the engine's GPUs (tensor x pipeline parallel), `num_cpus`
               and custom `resources`; each actor loads its model on its first shard, then keeps it.
    jobs       one shard each: a prompt chunk for the members of one engine, or a chunk for the
               judge once all of its completion shards are written, so judging starts while other
               chunks are still being generated. Each pool's actors take jobs from its queue.
    the store  this process reads a job's inputs from the run directory, sends them with the job,
               and writes what comes back (atomically, as every shard), with the node and process
               that made it in the shard's metadata (`ShardInfo.worker`). Nodes need no shared disk.

A worker that dies (its process, its node) loses only its shards in flight: they go back to the
queue and another worker (or a new one) makes them; a finished shard is on disk and never made
again, and a rerun finds it there as always. A shard lost with its worker three times stops the
stage. Pools start as their first job comes; a pool with nothing to do until other pools finish
(the judge waiting for completions) gives its resources back while another pool's worker waits for
room, and a pool whose work is done gives them back at once.

The flow's process holds one prompt chunk per job in flight, never the run. Nodes must have rlaif
installed, the models (or the hub) reachable, and the variables that endpoints name (`api_key_env`)
set; a key is never sent through Ray.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from rlaif.core.errors import ConfigError, RlaifError
from rlaif.core.progress import NULL, Reporter, Task
from rlaif.core.records import Completion, Prompt
from rlaif.core.store import Manifest, RunStore, ShardInfo
from rlaif.engines.base import EngineSettings
from rlaif.engines.pool import EnginePool, EngineSpec, Replica
from rlaif.generation.ensemble import STAGE as COMPLETIONS
from rlaif.generation.ensemble import GeneratorSpec, Unit, answer_chunk, manifest_of, plan_generation, rows_to_send
from rlaif.generation.prompt_sets import PROMPTS
from rlaif.judges.spec import JudgeSpec
from rlaif.judges.stage import judge_chunk, judge_dir, record_type, shard_key

log = logging.getLogger(__name__)

ADDRESS_ENV = "RAY_ADDRESS"
IN_FLIGHT = 2  # jobs sent to one worker at a time: the next is there when the last ends
ATTEMPTS = 3  # times a shard may be lost with its worker before the stage stops
RELEASE_AFTER_S = 2.0  # a worker waiting this long for room makes idle pools give theirs back
ENDPOINT_CPUS = 0.25  # a worker that only talks HTTP


def address(cli: str | None = None) -> str | None:
    """The cluster to use: `--ray ADDRESS`, else RAY_ADDRESS, else None (run in this process)."""
    return cli or os.environ.get(ADDRESS_ENV) or None


def loopback(addr: str) -> bool:
    host = addr.split("://")[-1].rsplit(":", 1)[0]
    return addr == "local" or host in ("127.0.0.1", "localhost", "::1")


def keep_on_loopback() -> None:
    """A Ray on this machine stays on 127.0.0.1.

    Ray replaces 127.0.0.1 with the machine's network address (`resolve_ip_for_localhost`) so that
    other machines can join; a cluster meant for one machine (`--ray local`, or nodes started with
    `--node-ip-address=127.0.0.1`) would then listen on the network. Checked against ray 2.60.
    """
    import ray._private.services as services
    import ray.util

    services.resolve_ip_for_localhost = lambda host: host
    services.get_node_ip_address = ray.util.get_node_ip_address = lambda address=None: "127.0.0.1"


def connect(addr: str) -> None:
    import ray

    if ray.is_initialized():
        return
    if loopback(addr):
        keep_on_loopback()
    import rlaif

    # this process's rlaif goes to the workers with the job, so every node runs the same code
    code = {"py_modules": [os.path.dirname(rlaif.__file__)]}
    kwargs: dict[str, Any] = dict(logging_level=logging.WARNING, log_to_driver=False, configure_logging=False,
                                  runtime_env=code)
    if addr == "local":
        ray.init(address="local", include_dashboard=False, **kwargs)
    else:
        ray.init(address=addr, **kwargs)


# ----------------------------------------------------------------------------- the worker (a Ray actor)
class ShardWorker:
    """One replica of an engine: loads it on its first job, then makes shard after shard."""

    def __init__(self, spec: EngineSpec | None, seed: int, replica: int = 0, replicas: int = 1):
        self.spec, self.seed, self.replica, self.replicas = spec, seed, replica, replicas
        self.pool = EnginePool(seed=seed, replica=Replica(replica, replicas, ray=True))

    def where(self) -> dict[str, str]:
        import ray

        ctx = ray.get_runtime_context()
        return {"node": ctx.get_node_id(), "host": ray.util.get_node_ip_address(), "pid": str(os.getpid())}

    def _engine(self):
        """This replica's engine, as its backend opens one replica of several (engines/backend.py)."""
        return self.pool.get(self.spec) if self.spec is not None else None

    def generate(self, specs: list[GeneratorSpec], prompts: list[Prompt], old: list, generators: list[GeneratorSpec],
                 models_per_prompt: int | None) -> list[list[Completion]]:
        return answer_chunk(self._engine(), specs, prompts, old, generators, models_per_prompt, self.seed)

    def judge(self, spec: JudgeSpec, prompts: dict[str, Prompt], completions: list[Completion], old: list | None) -> list:
        return judge_chunk(spec, self._engine(), prompts, completions, old, self.seed)

    def cpu_seconds(self) -> float:
        t = os.times()
        return t.user + t.system

    def close(self) -> None:
        self.pool.close()


# ----------------------------------------------------------------------------- what the driver keeps
@dataclass
class Job:
    kind: str  # "generate" or "judge"
    chunk: ShardInfo  # the prompt chunk
    units: list[Unit] = field(default_factory=list)  # generate: the members' shards on this pool's engine
    key: str = ""  # judge: its shard
    info: ShardInfo | None = None  # judge: the shard as an earlier run left it
    shards: list[ShardInfo] = field(default_factory=list)  # judge: the chunk's completion shards
    rows: int = 0
    attempts: int = 0
    sent: float = 0.0

    def describe(self) -> str:
        who = "+".join(u.spec.name for u in self.units) if self.units else "judge"
        return f"{who} shard of prompt chunk {self.chunk.key}"


@dataclass
class Worker:
    handle: Any
    placed: Any  # the ref of its where(): ready once Ray has found it room
    started: float
    replica: int = 0  # which of the pool's replicas (an endpoint replica's own servers follow from it)
    where: dict[str, str] | None = None
    busy: int = 0


@dataclass
class Pool:
    key: str
    spec: EngineSpec | None
    label: str
    options: dict[str, Any]
    replicas: int
    queue: deque = field(default_factory=deque)
    workers: list[Worker] = field(default_factory=list)
    judge: bool = False  # takes judge jobs, which keep coming while chunks are generated
    task: Task | None = None
    failed_starts: int = 0
    last_error: str = ""

    @property
    def busy(self) -> int:
        return sum(w.busy for w in self.workers)


@dataclass
class Stats:
    """What a cluster run did: read by `rlaif`'s notes, the tests and bench/scale.py."""

    shards: int = 0
    requeued: int = 0  # jobs sent again after their worker was lost
    workers: int = 0  # actors started
    by_node: dict[str, int] = field(default_factory=dict)
    worker_cpu_s: float = 0.0  # CPU time of the workers that finished normally
    busy_s: float = 0.0  # from the first job sent to the last shard written
    steady_rows: int = 0  # rows written once every worker was up and before the queues ran dry...
    steady_s: float = 0.0  # ...and the time between those two moments (bench/scale.py's throughput)
    noted: tuple[int, int, int] = (0, 0, 0)

    def notes(self) -> dict[str, int]:
        """For a stage's report: shards, nodes and re-sent jobs since the last call ({} if none)."""
        shards, requeued, workers = self.shards - self.noted[0], self.requeued - self.noted[1], self.workers - self.noted[2]
        self.noted = (self.shards, self.requeued, self.workers)
        if not shards and not requeued:
            return {}
        return {"shards": shards, "nodes": len(self.by_node), "workers": workers, "re-queued": requeued}


class Cluster:
    """The flow run's connection to Ray (made on first use) and its stage runs."""

    def __init__(self, addr: str):
        self.address = addr
        self.stats = Stats()

    # ---- the stages
    def generate(self, prompts: Manifest, generators: list[GeneratorSpec], store: RunStore,
                 default_engine: EngineSettings | None, models_per_prompt: int | None, seed: int,
                 judge: JudgeSpec | None = None, report: Reporter = NULL) -> Manifest:
        """Generation (and, given `judge`, judging as chunks complete); returns the completions' manifest."""
        units = plan_generation(prompts, generators, store, models_per_prompt, seed)
        Run(self, store, generators, default_engine, models_per_prompt, seed, judge, report).run(prompts, units)
        return manifest_of(units)

    def judge(self, prompts: Manifest, completions: Manifest, generators: list[GeneratorSpec], store: RunStore,
              spec: JudgeSpec, default_engine: EngineSettings | None, seed: int, report: Reporter = NULL) -> None:
        """Judge every chunk of `completions` not judged yet (the judge stage then finds them done)."""
        units = [Unit(None, chunk, s.key, s) for chunk in prompts.shards  # type: ignore[arg-type]
                 for s in completions.by_group().get(chunk.key, [])]
        Run(self, store, generators, default_engine, None, seed, spec, report).run(prompts, units)


class Run:
    """One stage run on the cluster: pools, their queues, and the loop that feeds them."""

    def __init__(self, cluster: Cluster, store: RunStore, generators: list[GeneratorSpec],
                 default: EngineSettings | None, models_per_prompt: int | None, seed: int,
                 judge: JudgeSpec | None, report: Reporter):
        self.cluster, self.store, self.generators, self.default = cluster, store, generators, default
        self.models_per_prompt, self.seed, self.judge, self.report = models_per_prompt, seed, judge, report
        self.pools: dict[str, Pool] = {}
        self.in_flight: dict[Any, tuple[Pool, Worker, Job]] = {}
        self.waiting: dict[str, int] = {}  # chunk -> generation jobs not written yet
        self.chunk_units: dict[str, list[Unit]] = {}
        self.first_sent: float | None = None
        self.last_written = 0.0
        self.all_up: float | None = None  # when every worker asked for had started
        self.dry: float | None = None  # when the last job left the queues

    # ---- planning
    def run(self, prompts: Manifest, units: list[Unit]) -> None:
        for u in units:
            self.chunk_units.setdefault(u.chunk.key, []).append(u)
        gen_jobs: list[tuple[str, Job]] = []
        for chunk in prompts.shards:
            by_engine: dict[str, list[Unit]] = {}
            for u in self.chunk_units.get(chunk.key, []):
                if u.spec is not None and u.todo:
                    by_engine.setdefault(u.spec.engine_spec(self.default).key, []).append(u)
            for key, mine in by_engine.items():
                gen_jobs.append((key, Job("generate", chunk, mine, rows=rows_to_send(mine, self.generators,
                                                                                   self.models_per_prompt))))
            self.waiting[chunk.key] = len(by_engine)
        judge_jobs = [j for chunk in prompts.shards if self.waiting[chunk.key] == 0 and chunk.key in self.chunk_units
                      and (j := self.judge_job(chunk)) is not None]
        if not gen_jobs and not judge_jobs:
            return
        connect(self.cluster.address)
        import ray

        self.actor = ray.remote(ShardWorker)
        for key, job in gen_jobs:
            self.pool_for(key, job.units[0].spec.engine_spec(self.default), job.units[0].spec.name).queue.append(job)
        if self.judge is not None:
            self.judge_pool()
        for job in judge_jobs:
            self.add_judge_job(job)
        self.plan_replicas()
        for pool in self.pools.values():
            pool.task = self.report.task(f"{pool.label} (ray, {pool.replicas} workers)", sum(j.rows for j in pool.queue))
        try:
            self.loop()
        finally:
            self.shutdown()
        s = self.cluster.stats
        if self.first_sent is not None:
            s.busy_s += self.last_written - self.first_sent
        if self.all_up is not None and self.dry is not None and s.steady_rows:
            s.steady_s += self.dry - self.all_up
        nodes = ", ".join(f"{n[:8]}: {c}" for n, c in s.by_node.items())
        self.report.note(f"ray: {s.shards} shards on {len(s.by_node)} nodes ({nodes})"
                         + (f"; {s.requeued} sent again after a lost worker" if s.requeued else ""))

    def judge_job(self, chunk: ShardInfo) -> Job | None:
        """The judge's job for a chunk whose completion shards are all written; None if done already."""
        if self.judge is None:
            return None
        shards = [u.info for u in self.chunk_units.get(chunk.key, []) if u.info is not None]
        key = shard_key(self.judge.settings_hash(), shards)
        info = self.store.info(judge_dir(self.judge.name), key, record_type(self.judge))
        if info is not None and not info.retryable:
            return None
        return Job("judge", chunk, key=key, info=info, shards=shards,
                   rows=info.retryable if info else sum(s.rows for s in shards))

    def judge_pool(self) -> Pool:
        spec = self.judge.engine_spec(self.default)  # type: ignore[union-attr]
        key = spec.key if spec is not None else f"judge-{self.judge.name}"  # type: ignore[union-attr]
        pool = self.pool_for(key, spec, self.judge.name)  # type: ignore[union-attr]
        pool.judge = True
        return pool

    def add_judge_job(self, job: Job) -> None:
        pool = self.judge_pool()
        pool.queue.appendleft(job)  # a judged chunk is a finished row: before more generation
        if pool.task is not None:
            pool.task.grow(job.rows)

    def pool_for(self, key: str, spec: EngineSpec | None, name: str) -> Pool:
        pool = self.pools.get(key)
        if pool is None:
            settings = spec.settings if spec is not None else EngineSettings()
            pool = self.pools[key] = Pool(key, spec, name, self.demand(spec, settings), 0)
        elif name not in pool.label.split("+"):
            pool.label += "+" + name
        return pool

    def demand(self, spec: EngineSpec | None, s: EngineSettings) -> dict[str, Any]:
        """Ray actor options for one replica of an engine."""
        import ray

        local = spec is None or spec.local
        gpus = s.gpus if local and ray.cluster_resources().get("GPU", 0) > 0 else 0
        cpus = s.num_cpus if s.num_cpus is not None else (1.0 if local else ENDPOINT_CPUS)
        return dict(num_cpus=cpus, num_gpus=gpus, resources=dict(s.resources))

    def plan_replicas(self) -> None:
        """Each pool's replica count, after checking that one replica fits on some node. "auto"
        pools share what the fixed ones leave of the cluster; an endpoint's "auto" is one per server."""
        import ray

        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
        left = dict(ray.cluster_resources())
        autos = []
        for pool in self.pools.values():
            need = self.needs(pool)
            if not any(all(n.get(r, 0) >= v for r, v in need.items()) for n in nodes):
                biggest = {r: max(n.get(r, 0) for n in nodes) for r in need}
                raise ConfigError(f"{pool.label}: one replica needs {need}, and no node of the Ray cluster has that "
                                  f"much (the most on one node: {biggest}); lower tensor_parallel_size, num_cpus or "
                                  f"resources in its engine: block")
            replicas = self.settings(pool).replicas
            if replicas != "auto":
                pool.replicas = replicas
            elif pool.spec is not None and pool.spec.backend.auto_replicas(pool.spec) is not None:
                pool.replicas = pool.spec.backend.auto_replicas(pool.spec)
            else:
                autos.append(pool)
                continue
            for r, v in need.items():
                left[r] = left.get(r, 0) - v * pool.replicas
        for pool in autos:
            need = self.needs(pool)
            pool.replicas = max(1, min(int(max(left.get(r, 0), 0) // v) for r, v in need.items()) // len(autos))
        for pool in self.pools.values():  # more workers than chunks would load a model for nothing
            pool.replicas = min(pool.replicas, max(1, len(self.waiting)))

    def settings(self, pool: Pool) -> EngineSettings:
        return pool.spec.settings if pool.spec is not None else EngineSettings()

    @staticmethod
    def needs(pool: Pool) -> dict[str, float]:
        o = pool.options
        need = {"CPU": o["num_cpus"], "GPU": o["num_gpus"], **o["resources"]}
        return {r: v for r, v in need.items() if v}

    # ---- the loop
    def loop(self) -> None:
        import ray

        while self.in_flight or any(p.queue for p in self.pools.values()):
            self.dispatch()
            placing = {w.placed: (p, w) for p in self.pools.values() for w in p.workers if w.where is None}
            refs = list(self.in_flight) + list(placing)
            ready, _ = ray.wait(refs, num_returns=1, timeout=1.0, fetch_local=False) if refs else ([], [])
            if not ready:
                log.debug("waiting: %s", {p.label: (len(p.queue), p.busy, [w.where is not None for w in p.workers])
                                          for p in self.pools.values()})
            else:
                ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0, fetch_local=False)
            for ref in ready:
                if ref in placing:
                    self.placed(*placing[ref], ref)
                else:
                    self.finished(ref)
            self.release()

    def dispatch(self) -> None:
        import ray

        for pool in self.pools.values():
            while pool.queue and len(pool.workers) < pool.replicas:
                if pool.failed_starts >= ATTEMPTS:
                    raise RlaifError(f"{pool.label}: {pool.failed_starts} workers in a row died before starting "
                                     f"(last: {pool.last_error})")
                # SPREAD: a pool's replicas on as many nodes as have room, not packed onto one
                replica = min(set(range(pool.replicas)) - {w.replica for w in pool.workers})  # a lost one's place
                worker = self.actor.options(**pool.options, max_restarts=0, scheduling_strategy="SPREAD").remote(
                    pool.spec, self.seed, replica, pool.replicas)
                pool.workers.append(Worker(worker, worker.where.remote(), time.monotonic(), replica))
                self.cluster.stats.workers += 1
            for w in pool.workers:
                while pool.queue and w.where is not None and w.busy < IN_FLIGHT:
                    job = pool.queue.popleft()
                    job.sent = time.perf_counter()
                    self.in_flight[self.send(w, job)] = (pool, w, job)
                    more = self.judge is not None and any(self.waiting.values())  # judge jobs still to come
                    if not more and not any(p.queue for p in self.pools.values()):
                        self.dry = self.dry or job.sent
                    w.busy += 1
                    self.first_sent = self.first_sent or time.perf_counter()

    def send(self, w: Worker, job: Job):
        """The job's inputs, read here from the run directory, go with it."""
        store = self.store
        if job.kind == "generate":
            prompts = store.read(PROMPTS, job.chunk.key, Prompt)
            old = [store.read(COMPLETIONS, u.key, Completion) if u.info is not None else None for u in job.units]
            return w.handle.generate.remote([u.spec for u in job.units], prompts, old, self.generators,
                                            self.models_per_prompt)
        prompts = {p.prompt_id: p for p in store.iter(PROMPTS, job.chunk.key, Prompt)}
        completions = [c for s in job.shards for c in store.iter(COMPLETIONS, s.key, Completion)]
        stage = judge_dir(self.judge.name)  # type: ignore[union-attr]
        old = store.read(stage, job.key, record_type(self.judge)) if job.info is not None else None  # type: ignore[arg-type]
        return w.handle.judge.remote(self.judge, prompts, completions, old)

    def placed(self, pool: Pool, w: Worker, ref) -> None:
        import ray

        try:
            w.where = ray.get(ref)
            pool.failed_starts = 0
            if self.all_up is None and all(len(p.workers) >= p.replicas and all(x.where for x in p.workers)
                                           for p in self.pools.values() if p.queue or p.busy):
                self.all_up = time.perf_counter()
        except ray.exceptions.RayError as e:  # died before it started: another one is made
            log.warning("%s: a worker could not start (%s)", pool.label, e)
            pool.failed_starts += 1
            pool.last_error = str(e).strip().splitlines()[-1][:300]
            pool.workers.remove(w)

    def finished(self, ref) -> None:
        import ray

        pool, w, job = self.in_flight.pop(ref)
        w.busy -= 1
        try:
            result = ray.get(ref)
        except ray.exceptions.RayTaskError as e:  # the job itself failed: the stage stops, as in-process
            cause = e.cause if isinstance(e.cause, BaseException) else e
            raise cause from None
        except ray.exceptions.RayError as e:  # the worker, its node or its result is gone
            self.lost(pool, w, job, e)
            return
        self.write(job, result, w.where or {})
        if pool.task is not None:
            pool.task(job.rows)

    def lost(self, pool: Pool, w: Worker, job: Job, error: BaseException) -> None:
        import ray

        job.attempts += 1
        self.cluster.stats.requeued += 1
        if job.attempts >= ATTEMPTS:
            raise RlaifError(f"{pool.label}: the {job.describe()} was lost with its worker {job.attempts} times "
                             f"(last: {type(error).__name__}); see the Ray logs of node {(w.where or {}).get('node')}")
        log.warning("%s: worker %s lost (%s); its %s goes back to the queue", pool.label, w.where,
                    type(error).__name__, job.describe())
        if w in pool.workers:
            pool.workers.remove(w)
            ray.kill(w.handle, no_restart=True)
        pool.queue.appendleft(job)

    def write(self, job: Job, result: list, where: dict[str, str]) -> None:
        store, stats = self.store, self.cluster.stats
        if job.kind == "generate":
            for u, records in zip(job.units, result):
                u.info = store.write(COMPLETIONS, u.key, records, group=job.chunk.key, name=u.spec.name, worker=where)
            self.waiting[job.chunk.key] -= 1
            if self.waiting[job.chunk.key] == 0 and (judging := self.judge_job(job.chunk)) is not None:
                self.add_judge_job(judging)
            shards = len(job.units)
        else:
            store.write(judge_dir(self.judge.name), job.key, result, group=job.chunk.key,  # type: ignore[union-attr]
                        name=self.judge.name, worker=where)  # type: ignore[union-attr]
            shards = 1
        stats.shards += shards
        if self.all_up is not None and self.dry is None:  # written while every worker had work
            stats.steady_rows += job.rows
        node = where.get("node", "?")
        stats.by_node[node] = stats.by_node.get(node, 0) + shards
        self.last_written = time.perf_counter()

    def release(self) -> None:
        """Pools with nothing left give their workers back; pools waiting on others give theirs back
        while another pool's worker waits for room."""
        now = time.monotonic()
        chunks_open = any(n > 0 for n in self.waiting.values())
        starved = any(w.where is None and now - w.started > RELEASE_AFTER_S
                      for p in self.pools.values() for w in p.workers)
        for pool in self.pools.values():
            if pool.queue or pool.busy or not pool.workers:
                continue
            if not (pool.judge and chunks_open) or starved:
                self.stop(pool)

    def stop(self, pool: Pool) -> None:
        import ray

        placed = [w for w in pool.workers if w.where is not None]
        try:
            for cpu in ray.get([w.handle.cpu_seconds.remote() for w in placed], timeout=30):
                self.cluster.stats.worker_cpu_s += cpu
            ray.get([w.handle.close.remote() for w in placed], timeout=60)
        except ray.exceptions.RayError as e:
            log.warning("%s: stopping its workers: %s", pool.label, e)
        for w in pool.workers:
            ray.kill(w.handle, no_restart=True)
        pool.workers = []

    def shutdown(self) -> None:
        import ray

        for pool in self.pools.values():
            for w in pool.workers:
                ray.kill(w.handle, no_restart=True)
            pool.workers = []


@contextmanager
def cluster(addr: str | None) -> Iterator[Cluster | None]:
    """A flow run's cluster (None: run in this process); Ray is connected on first use and the
    connection is closed at the end (a `local` Ray stops with it)."""
    if not addr:
        yield None
        return
    c = Cluster(addr)
    try:
        yield c
    finally:
        import sys

        ray = sys.modules.get("ray")
        if ray is not None and ray.is_initialized():
            ray.shutdown()
