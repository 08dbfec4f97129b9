"""The Ray executor: any sharded stage's jobs on a cluster, members and judge side by side.

`rlaif run RECIPE --ray ADDRESS` (or RAY_ADDRESS in the environment; `--ray local` starts a Ray on
this machine) runs the jobs of the generation and judge stages (runners/jobs.py) here instead of in
the flow's process (runners/local.py). Without it nothing changes: the stages run in-process. It
runs the same jobs as the in-process executor, with the same `compute`: nothing here knows what a
stage makes.

Why our own actors and not Ray Data's `ray.data.llm` processors, measured with
`python bench/scale.py --ray-data`: see `WHY_ACTORS` below.

Why Ray directly, under the Prefect flow, and not prefect-ray's task runner: a worker must load its
model once and then take shard after shard (a 72B judge loads in minutes), which is a Ray actor;
prefect-ray runs each Prefect task as a stateless Ray task, so every shard would load its model
again, and every shard would be a Prefect task run with its own persisted result. Here Prefect keeps
one task per stage (its cache and retries unchanged) and that task drives the cluster.

    pools      one per engine (model + engine settings; a member's and the judge's are one pool
               when they match): `replicas` Ray actors (`EngineSettings.replicas`, "auto": as many
               as fit), each asking for the engine's GPUs (tensor x pipeline parallel), `num_cpus`
               and custom `resources`; each actor loads its model on its first shard, then keeps it.
    jobs       the stage's jobs (a prompt chunk for the members of one engine; a chunk for the judge),
               and a following stage's job for a chunk (`follower`: the judge) once all of the
               chunk's shards are written, so judging starts while other chunks are still being
               generated. Each pool's actors take jobs from its queue.
    the store  this process reads a job's inputs from the run directory, sends them with the job,
               and writes what comes back (atomically, as every shard), with the node and process
               that made it in the shard's metadata (`ShardInfo.worker`). Nodes need no shared disk.

A pool of local engines whose work is done keeps its workers, loaded, until the stage run ends,
unless another pool's worker waits for their room; at the end they stay with the executor, and the
run's next stage on the same engine (the held-out prompts, then a round's prompts, on a round's
policy; a round's judge, then the held-out answers) takes them as they are: one load per model for
consecutive stages. Any other stage run stops them first, and so does this process before it needs
the accelerator itself (training, measuring with HF models: `release_kept`), and the run's end.

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
from dataclasses import dataclass, field
from typing import Any

from rlaif.core.errors import ConfigError, RlaifError
from rlaif.core.progress import NULL, Reporter, Task
from rlaif.core.store import Manifest, RunStore
from rlaif.engines.base import EngineSettings
from rlaif.engines.pool import EnginePool, EngineSpec, Replica
from rlaif.runners.jobs import Job, ShardedStage, damaged_notes, shards_by_group, write

log = logging.getLogger(__name__)

WHY_ACTORS = """Why this executor keeps its own actors and is not built on Ray 2.60's `ray.data.llm`.

Measured (`python bench/scale.py --ray-data`): the same 32 MT-Bench prompts, SmolLM2-135M on
vLLM's CPU engine with the same engine kwargs, greedy, 32 tokens, one replica, on a local Ray on
2 shared cores (other processes beside it; one run each, so the split between loading
and generating is rough):

                   wall   1-prompt run   the other 31   completions/s   unchanged rerun
    our actors    41.2 s      33.4 s         7.8 s      0.78 (3.97)         0.0 s
    ray.data.llm  44.2 s      41.6 s         2.5 s      0.72 (12.3)         8.4 s

(the 1-prompt run is the actor's start and the engine's load; in brackets, without it). All 32
completions were the same text. Ray Data's generation itself was faster: its engine actor takes
several batches at once (`max_concurrent_batches`), where our worker sends its chunks to vLLM one
call at a time; its 1-prompt run also asked for log-probs and a JSON schema. End to end, with the
load, the two were within 3 s. Our unchanged rerun planned from the sidecars and started nothing;
Ray Data's took 8.4 s (its pipeline built, its checkpoint read) to write nothing.

What Ray Data does give, checked in the installed source and by that run: its vLLM processor runs on
CPU when given a CPU bundle (`placement_group_config={"bundles": [{"CPU": 1}]}`; without one each
replica asks for a GPU); a row's own `sampling_params` reach vLLM whole, so per-request token
log-probs and a JSON schema (`structured_outputs`) work (the probe row got log-probs back and
output held to the schema); failed rows are kept as error rows; and
`DataContext.checkpoint_config` (a `CheckpointConfig` on an id column, beta) makes a Read -> ... ->
file Write pipeline resumable: each write block's file is committed after a pending checkpoint,
and a rerun filters the ids already written.

What it cannot do that this pipeline needs:
  - resume by content, not by id: a checkpoint skips a row whose id was written, whatever made it;
    our shards are keyed by the member's settings and the chunk's content (a changed member, or a
    judge shard whose completions were made again, is made again alone), carry a sidecar
    (counts, rows that failed transiently, the worker, the inputs' hashes) that later stages and
    the next run plan from without reading a record, and a rerun re-asks only the transiently
    failed rows of a shard.
  - one loaded engine for several stages: each processor's engine stage is an actor pool of its
    own, so a member and the judge on one model are two pools, each loading the model (and holding
    its memory) for the whole run; our pool is keyed by the engine alone.
  - judging a chunk once all its members' completions exist: Ray Data streams a batch from one
    operator to the next, but bringing together every member's completion of a prompt is a
    groupby, an all-to-all barrier over the whole dataset; here the judge's job for a chunk is
    planned as the chunk's last completion shard is written, from those shards' content hashes.
  - the stages' own `compute` unchanged from the in-process executor: re-asks of unparsed verdicts
    at another temperature (a second request that depends on the first's answer), the Batch API,
    several servers for one endpoint with failover, and API keys read on the node from the
    variable an endpoint names (the HTTP processor takes one url and its headers, key included, in
    a config that travels through Ray).
So the executor keeps its own actors: one per engine replica, loaded once, fed jobs from one queue."""

IN_FLIGHT = 2  # jobs sent to one worker at a time: the next is there when the last ends
ATTEMPTS = 3  # times a shard may be lost with its worker before the stage stops
RELEASE_AFTER_S = 2.0  # a worker waiting this long for room makes idle pools give theirs back
ENDPOINT_CPUS = 0.25  # a worker that only talks HTTP


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

    def compute(self, stage: ShardedStage, job: Job, inputs: Any) -> list:
        """One job's shards, computed by the stage itself (the driver writes them)."""
        return stage.compute(self._engine(), [(job, inputs)])[0]

    def cpu_seconds(self) -> float:
        t = os.times()
        return t.user + t.system

    def close(self) -> None:
        self.pool.close()


# ----------------------------------------------------------------------------- what the driver keeps
@dataclass
class Sent:
    """A job as the driver keeps it: which stage it is of, and how often it was lost with a worker."""

    stage: ShardedStage
    job: Job
    attempts: int = 0
    sent: float = 0.0

    @property
    def rows(self) -> int:
        return self.job.rows


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
    follower: bool = False  # takes a following stage's jobs, which keep coming while chunks are made
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


class RayExecutor:
    """A flow run's connection to Ray (made on first use) and the stage runs on it."""

    distributed = True

    def __init__(self, addr: str):
        self.address = addr
        self.stats = Stats()
        self.kept: dict[str, Pool] = {}  # local-engine pools whose loaded workers outlived their stage run

    def release_kept(self) -> None:
        """The kept workers stop (their engines closed): this process needs the accelerator, or the run ends."""
        kept, self.kept = list(self.kept.values()), {}
        for pool in kept:
            stop_workers(pool, self.stats)

    def run(self, stage: ShardedStage, store: RunStore, reporter: Reporter = NULL, jobs: list[Job] | None = None,
            follower: ShardedStage | None = None) -> Manifest:
        """Make every shard of `stage` not done yet and, given `follower`, the follower's shard of
        each chunk as soon as the chunk's shards are all written; returns `stage`'s manifest."""
        jobs = stage.plan(store) if jobs is None else jobs
        for line in stage.notes(jobs) + damaged_notes(store, jobs):
            reporter.note(line)
        Run(self, store, reporter).run(stage, jobs, follower)
        return stage.manifest(jobs)

    def notes(self) -> dict[str, int]:
        return self.stats.notes()

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        """The connection is closed at the end (a `local` Ray stops with it)."""
        import sys

        ray = sys.modules.get("ray")
        if ray is not None and ray.is_initialized():
            self.release_kept()
            ray.shutdown()


class Run:
    """One stage run on the cluster (and its follower's): pools, their queues, and the loop that feeds them."""

    def __init__(self, executor: RayExecutor, store: RunStore, report: Reporter):
        self.executor, self.store, self.report = executor, store, report
        self.follower: ShardedStage | None = None
        self.pools: dict[str, Pool] = {}
        self.in_flight: dict[Any, tuple[Pool, Worker, Sent]] = {}
        self.waiting: dict[str, int] = {}  # chunk -> the stage's jobs not written yet
        self.jobs: list[Job] = []
        self.first_sent: float | None = None
        self.last_written = 0.0
        self.all_up: float | None = None  # when every worker asked for had started
        self.dry: float | None = None  # when the last job left the queues

    # ---- planning
    def run(self, stage: ShardedStage, jobs: list[Job], follower: ShardedStage | None) -> None:
        self.jobs, self.follower, self.seed = jobs, follower, getattr(stage, "seed", 0)
        todo = [j for j in jobs if j.todo]
        for j in jobs:
            self.waiting[j.group] = self.waiting.get(j.group, 0) + j.todo
        following = [sent for group, n in self.waiting.items() if n == 0 and (sent := self.follow(group)) is not None]
        if not todo and not following:
            return
        connect(self.executor.address)
        import ray

        self.actor = ray.remote(ShardWorker)
        for job in todo:
            self.pool_for(job).queue.append(Sent(stage, job))
        if follower is not None and any(self.waiting.values()):
            self.follower_pool(follower)
        for sent in following:
            self.add_following(sent)
        self.plan_replicas()
        self.adopt()
        for pool in self.pools.values():
            pool.task = self.report.task(f"{pool.label} (ray, {pool.replicas} workers)", sum(j.rows for j in pool.queue))
        try:
            self.loop()
        except BaseException:
            self.shutdown()
            raise
        self.shutdown(keep=True)
        s = self.executor.stats
        if self.first_sent is not None:
            s.busy_s += self.last_written - self.first_sent
        if self.all_up is not None and self.dry is not None and s.steady_rows:
            s.steady_s += self.dry - self.all_up
        nodes = ", ".join(f"{n[:8]}: {c}" for n, c in s.by_node.items())
        self.report.note(f"ray: {s.shards} shards on {len(s.by_node)} nodes ({nodes})"
                         + (f"; {s.requeued} sent again after a lost worker" if s.requeued else ""))

    def adopt(self) -> None:
        """Workers the last stage run kept, loaded, go on in this run's pool of the same engine;
        the others stop, giving their room to this run's pools."""
        kept, self.executor.kept = self.executor.kept, {}
        for key, old in kept.items():
            pool = self.pools.get(key)
            if pool is None or pool.workers:
                stop_workers(old, self.executor.stats)
                continue
            pool.workers = old.workers
            for w in pool.workers:
                w.busy = 0

    def follow(self, group: str) -> Sent | None:
        """The follower's job for a chunk whose shards are all written; None if it is done already."""
        if self.follower is None:
            return None
        job = self.follower.plan_group(self.store, group, shards_by_group(self.jobs).get(group, []))
        return Sent(self.follower, job) if job is not None and job.todo else None

    def follower_pool(self, follower: ShardedStage, job: Job | None = None) -> Pool:
        if job is None:  # its pool before its first job: the engine every job of the follower runs on
            job = follower.plan_group(self.store, "", [])
        pool = self.pool_for(job)
        pool.follower = True
        return pool

    def add_following(self, sent: Sent) -> None:
        pool = self.follower_pool(sent.stage, sent.job)
        pool.queue.appendleft(sent)  # a judged chunk is a finished row: before more generation
        if pool.task is not None:
            pool.task.grow(sent.rows)

    def pool_for(self, job: Job) -> Pool:
        spec = job.engine
        key = spec.key if spec is not None else f"none-{job.label}"
        pool = self.pools.get(key)
        if pool is None:
            settings = spec.settings if spec is not None else EngineSettings()
            pool = self.pools[key] = Pool(key, spec, job.label, self.demand(spec, settings), 0)
        else:
            for name in job.label.split("+"):
                if name not in pool.label.split("+"):
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
                self.executor.stats.workers += 1
            for w in pool.workers:
                while pool.queue and w.where is not None and w.busy < IN_FLIGHT:
                    job = pool.queue.popleft()
                    job.sent = time.perf_counter()
                    self.in_flight[self.send(w, job)] = (pool, w, job)
                    more = self.follower is not None and any(self.waiting.values())  # follower jobs still to come
                    if not more and not any(p.queue for p in self.pools.values()):
                        self.dry = self.dry or job.sent
                    w.busy += 1
                    self.first_sent = self.first_sent or time.perf_counter()

    def send(self, w: Worker, sent: Sent):
        """The job's inputs, read here from the run directory, go with it."""
        return w.handle.compute.remote(sent.stage, sent.job, sent.stage.inputs(self.store, sent.job))

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

    def lost(self, pool: Pool, w: Worker, job: Sent, error: BaseException) -> None:
        import ray

        job.attempts += 1
        self.executor.stats.requeued += 1
        if job.attempts >= ATTEMPTS:
            raise RlaifError(f"{pool.label}: the {job.job.describe()} was lost with its worker {job.attempts} times "
                             f"(last: {type(error).__name__}); see the Ray logs of node {(w.where or {}).get('node')}")
        log.warning("%s: worker %s lost (%s); its %s goes back to the queue", pool.label, w.where,
                    type(error).__name__, job.job.describe())
        if w in pool.workers:
            pool.workers.remove(w)
            ray.kill(w.handle, no_restart=True)
        pool.queue.appendleft(job)

    def write(self, sent: Sent, result: list, where: dict[str, str]) -> None:
        stats, job = self.executor.stats, sent.job
        shards = write(self.store, job, result, where)
        if sent.stage is not self.follower:
            self.waiting[job.group] -= 1
            if self.waiting[job.group] == 0 and (following := self.follow(job.group)) is not None:
                self.add_following(following)
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
            if starved or not ((pool.follower and chunks_open) or keeps(pool)):
                stop_workers(pool, self.executor.stats)

    def shutdown(self, keep: bool = False) -> None:
        """The run's workers stop; with `keep` (the run ended well), idle loaded ones stay with the executor."""
        import ray

        for pool in self.pools.values():
            if keep and keeps(pool) and pool.workers and all(w.where is not None and not w.busy for w in pool.workers):
                pool.task, pool.queue = None, deque()
                self.executor.kept[pool.key] = pool
                continue
            for w in pool.workers:
                ray.kill(w.handle, no_restart=True)
            pool.workers = []


def keeps(pool: Pool) -> bool:
    """A pool worth keeping loaded for the run's next stage: a local engine (a model loaded in its
    workers), not an endpoint (nothing to load)."""
    return pool.spec is not None and pool.spec.local


def stop_workers(pool: Pool, stats: Stats) -> None:
    """A pool's workers close their engines and stop; their CPU time goes into the stats."""
    import ray

    placed = [w for w in pool.workers if w.where is not None]
    try:
        for cpu in ray.get([w.handle.cpu_seconds.remote() for w in placed], timeout=30):
            stats.worker_cpu_s += cpu
        ray.get([w.handle.close.remote() for w in placed], timeout=60)
    except ray.exceptions.RayError as e:
        log.warning("%s: stopping its workers: %s", pool.label, e)
    for w in pool.workers:
        ray.kill(w.handle, no_restart=True)
    pool.workers = []
