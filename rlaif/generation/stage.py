"""The generation stage: every prompt chunk answered by its ensemble members.

    GenerateStage(prompts, generators, ...).plan(store)   the jobs, from the shards' metadata alone
    generate(prompts, generators, store, ...)             run it here; returns the completions' Manifest

A member's shard for a chunk is keyed by the member's settings and the chunk's content
(`ensemble.member_shard_key`), so planning reads no record, an unchanged rerun computes nothing, and a
deleted shard is made again alone. A job is one chunk's members that share an engine (same model
and engine settings): their requests go to it in one call, so vLLM batches them as one. With an
earlier shard, only its rows that failed transiently are sent again; every other row is kept.
`last` names the engine to use last (the judge's, so it is still loaded for judging): see
`order` in runners/local.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from rlaif.core.progress import Task
from rlaif.core.records import Completion, Prompt
from rlaif.core.store import Manifest, RunStore, ShardInfo
from rlaif.engines.base import EngineSettings
from rlaif.engines.pool import EnginePool
from rlaif.generation.ensemble import STAGE, GeneratorSpec, assign, merged, request, member_shard_key, to_send
from rlaif.prompts.prompt_sets import PROMPTS
from rlaif.runners.jobs import Job, Shard


@dataclass
class GenerateStage:
    """Generation of a prompt manifest's chunks by `generators` (a recipe's members)."""

    prompts: Manifest
    generators: list[GeneratorSpec]
    default_engine: EngineSettings | None = None  # the recipe's `engine:` block
    models_per_prompt: int | None = None
    seed: int = 0
    last: str | None = None  # the engine key to use last
    name: str = "generate"
    follows: str | None = None

    def __post_init__(self) -> None:
        # a member's settings hash covers the engine settings it runs with, the recipe-wide ones
        # included: members given here without a recipe take `default_engine` as the recipe's
        self.generators = [with_engine_default(g, self.default_engine) for g in self.generators]

    def plan(self, store: RunStore) -> list[Job]:
        """Every chunk's jobs, one per engine its members run on, in the members' order."""
        jobs = []
        share = min(self.models_per_prompt or len(self.generators), len(self.generators)) / len(self.generators)
        for chunk in self.prompts.shards:
            by_engine: dict[str, Job] = {}
            for spec in self.generators:
                key = member_shard_key(spec, chunk, self.generators, self.models_per_prompt, self.seed)
                shard = Shard(STAGE, key, spec.name, store.info(STAGE, key, Completion))
                engine = spec.engine_spec(self.default_engine)
                job = by_engine.setdefault(engine.key, Job(chunk.key, engine, [], detail=[]))
                job.shards.append(shard)
                job.detail.append(spec)
            for job in by_engine.values():
                job.rows = sum(s.info.retryable if s.info else round(chunk.rows * share) for s in job.shards if s.todo)
                jobs.append(job)
        return jobs

    def plan_group(self, store: RunStore, group: str, before: list[ShardInfo]) -> Job | None:
        raise NotImplementedError("generation follows no stage")

    def notes(self, jobs: list[Job]) -> list[str]:
        shards = [s for j in jobs for s in j.shards]
        return [f"{g.name}: {sum(not s.todo for s in member_shards)} of {len(member_shards)} shards already done"
                for g in self.generators for member_shards in [[s for s in shards if s.name == g.name]]]

    def size(self, job: Job, inputs: tuple) -> int:
        """How many requests the job sends."""
        prompts, olds = inputs
        assigned = assign(prompts, self.generators, self.models_per_prompt, self.seed)
        return sum(len(to_send(assigned[spec.name], old)) for shard, spec, old in zip(job.shards, job.detail, olds)
                   if shard.todo)

    def inputs(self, store: RunStore, job: Job) -> tuple[list[Prompt], list[list[Completion] | None]]:
        """The chunk's prompts, and each member's shard from an earlier run (None: missing)."""
        prompts = store.read(PROMPTS, job.group, Prompt)
        return prompts, [store.read(s.stage, s.key, Completion) if s.info is not None and s.todo else None
                         for s in job.shards]

    def compute(self, engine, batch: list[tuple[Job, tuple]], task: Task | None = None) -> list[list[list[Completion]]]:
        """Every member's shard of every job in the batch, all requests in one engine call. A member
        whose shard is done already (it shares the job with one that is not) sends nothing (None)."""
        sends = []  # (job index, member, prompts to send, old shard)
        for i, (job, (prompts, olds)) in enumerate(batch):
            assigned = assign(prompts, self.generators, self.models_per_prompt, self.seed)
            for shard, member, old in zip(job.shards, job.detail, olds):  # not `spec`: errors name the request's
                sends.append((i, member, to_send(assigned[member.name], old) if shard.todo else None, old))
        results = iter(engine.generate([request(m, p) for _, m, to_ask, _ in sends for p in to_ask or ()], task))
        out: list[list] = [[] for _ in batch]
        for i, member, to_ask, old in sends:
            out[i].append(None if to_ask is None else merged(member, to_ask, old, results))
        return out

    def manifest(self, jobs: list[Job]) -> Manifest:
        """The completions, chunk by chunk in the members' order (what the judge's keys follow)."""
        order = {g.name: n for n, g in enumerate(self.generators)}
        shards = []
        for chunk in self.prompts.shards:
            member_shards = [s for j in jobs if j.group == chunk.key for s in j.shards]
            shards += [s.info for s in sorted(member_shards, key=lambda s: order[s.name]) if s.info is not None]
        return Manifest(stage=STAGE, shards=shards)


def with_engine_default(spec, default: EngineSettings | None):
    """`spec` (a member or a judge) knowing the recipe-wide engine block. A recipe's specs know it
    already; one given without a recipe (a library call) takes the stage's as its recipe's, so its
    settings hash, its shards' keys and its records' hashes are those the recipe would give."""
    if default is not None and spec._engine_default is None:
        spec._engine_default = default
    return spec


def generate(prompts: Manifest, generators: list[GeneratorSpec], store: RunStore, engines: EnginePool | None = None,
             default_engine: EngineSettings | None = None, models_per_prompt: int | None = None,
             seed: int = 0) -> Manifest:
    """Answer every prompt chunk with its members, here; returns the completions' manifest."""
    from rlaif.runners.local import LocalExecutor

    stage = GenerateStage(prompts, generators, default_engine, models_per_prompt, seed)
    with LocalExecutor(engines, seed) as executor:
        return executor.run(stage, store)
