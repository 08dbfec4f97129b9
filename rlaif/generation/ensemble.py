"""The generation stage: every prompt answered by its ensemble members, one prompt chunk at a time.

Each member has its own prompt format (the model's chat template, or URIAL's in-context alignment
prompt for a base model), an optional system prompt, its own sampling, and optionally its own
engine settings. The stage:

    plan_generation(prompts, generators, ...)   which shards exist, hold rows to send again, or are missing
    generate(prompts, generators, store, ...)   compute what is not done; returns the completions' Manifest

Prompts come as a manifest of prompt chunks (see `prompt_sets.write_prompt_chunks`). A member's
shard for a chunk is keyed by the member's settings hash and the chunk's content hash, so planning
reads no record, an unchanged rerun computes nothing, and a deleted shard is regenerated alone.
Members that run on the same engine (same model and engine settings) share one load and send
their requests for a chunk to it together, so vLLM batches them as one; `last` names the engine
to use last (the judge's, so it is still loaded for judging). Rows that failed transiently on an
earlier run are sent again; every other row is kept.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationInfo, field_validator, model_validator

from rlaif.core.progress import NULL, Reporter
from rlaif.core.records import Completion, Prompt, content_hash, derive_seed
from rlaif.core.store import Manifest, RunStore, ShardInfo
from rlaif.engines.base import EngineSettings, Request, Result, Sampling, output_settings, window
from rlaif.engines.openai_endpoint import Endpoint
from rlaif.engines.pool import EnginePool, EngineSpec
from rlaif.generation.prompt_sets import PROMPTS
from rlaif.prompts import load_template, plain_name

STAGE = "completions"
URIAL_STOP = ("```", "# Query")


class GeneratorSpec(BaseModel):
    """One ensemble member, as written in a recipe's `generators:` list."""

    model_config = ConfigDict(extra="forbid")

    name: str  # how records and the dataset name this member
    model: str  # a bundled model name, a local model directory, a hub id, or the endpoint's model name
    endpoint: Endpoint | None = None  # set: generate through an OpenAI-compatible server, not vLLM here
    format: Literal["chat", "urial"] = "chat"  # urial: in-context prompt for base models
    system_prompt: str | None = None
    urial_version: str = "v1"
    sampling: Sampling = Field(default_factory=Sampling)
    engine: EngineSettings | None = None  # this member's engine settings; default: the recipe's `engine:`
    # set from the recipe, not written in a member's block: its templates_dir and its `engine:` block
    _templates_dir: str | None = PrivateAttr(None)
    _engine_default: EngineSettings | None = PrivateAttr(None)

    @field_validator("urial_version")
    @classmethod
    def _plain(cls, value: str) -> str:
        if not plain_name(value):
            raise ValueError(f"{value!r} is not a plain version name (letters, digits, _ - .; no '/' or '..')")
        return value

    @model_validator(mode="after")
    def _recipe_context(self, info: ValidationInfo) -> GeneratorSpec:
        self._templates_dir = (info.context or {}).get("templates_dir")
        return self

    def urial_template(self):
        return load_template("urial", self.urial_version, self._templates_dir)

    def settings_hash(self) -> str:
        template = self.urial_template().hash if self.format == "urial" else None
        where = self.endpoint.base_url if self.endpoint else None  # the key is never part of a hash
        # the engine settings that change what a local model writes (dtype, quantization, ...); absent
        # when none is set, so the hashes of recipes that set none stand
        outputs = output_settings(self.engine_spec(self._engine_default).settings) if self.endpoint is None else {}
        return content_hash(self.name, self.model, where, self.format, self.system_prompt, template, self.sampling,
                            *((outputs,) if outputs else ()))

    def engine_spec(self, default: EngineSettings | None = None) -> EngineSpec:
        return EngineSpec(self.model, self.endpoint, (self.engine or EngineSettings()).over(default))


# ----------------------------------------------------------------------------- one request, one record
def urial_text(spec: GeneratorSpec, prompt: Prompt) -> str:
    """URIAL: a preamble and three worked examples, then the conversation as Query/Answer blocks."""
    text = spec.urial_template().text
    if spec.system_prompt:
        # before the first example block (the preamble itself mentions "# Query:" in a sentence)
        text = text.replace("\n# Query:\n", "\n" + spec.system_prompt.strip() + "\n\n# Query:\n", 1)
    for m in prompt.messages:
        if m.role == "user":
            text += f"# Query:\n```\n{m.content}\n```\n\n"
        elif m.role == "assistant":
            text += f"# Answer:\n```\n{m.content}\n```\n\n"
    return text + "# Answer:\n```\n"


def request(spec: GeneratorSpec, prompt: Prompt) -> Request:
    """The member's request for one prompt, in its own format; the seed is per prompt, not per
    batch, so a prompt gets the same draw whatever chunk it lands in."""
    seed = derive_seed(spec.sampling.seed, prompt.prompt_id, prompt.hash)
    if spec.format == "urial":
        return Request(key=prompt.prompt_id, sampling=spec.sampling, seed=seed, prompt=urial_text(spec, prompt),
                       stop=URIAL_STOP, who=spec.name, row=prompt.prompt_id)
    messages = [m.model_dump() for m in prompt.messages]
    if spec.system_prompt and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": spec.system_prompt}] + messages
    return Request(key=prompt.prompt_id, sampling=spec.sampling, seed=seed, messages=messages, who=spec.name,
                   row=prompt.prompt_id)


def completion(spec: GeneratorSpec, settings: str, prompt: Prompt, r: Result) -> Completion:
    return Completion(completion_id=content_hash(prompt.prompt_id, prompt.hash, settings), prompt_id=prompt.prompt_id,
                      prompt_hash=prompt.hash, model=spec.name, settings_hash=settings,
                      text=r.text.strip() if r.text is not None and r.error is None else None,
                      finish_reason=r.finish_reason, prompt_tokens=r.prompt_tokens, output_tokens=r.output_tokens,
                      error=r.error, retryable=r.retryable)


def answer(engine, spec: GeneratorSpec, prompts: list[Prompt]) -> list[Completion]:
    """One member's completions of some prompts on an engine, without a run store."""
    settings = spec.settings_hash()
    return [completion(spec, settings, p, r) for p, r in zip(prompts, engine.generate([request(spec, p) for p in prompts]))]


# ----------------------------------------------------------------------------- who answers what
def assign(prompts: list[Prompt], generators: list[GeneratorSpec], models_per_prompt: int | None,
           seed: int) -> dict[str, list[Prompt]]:
    """Which prompts each member answers: all of them, or K members drawn per prompt with a seed
    (UltraFeedback drew 4 of 17). The draw depends on the prompt id and seed only."""
    names = [g.name for g in generators]
    if not models_per_prompt or models_per_prompt >= len(names):
        return {n: list(prompts) for n in names}
    out: dict[str, list[Prompt]] = {n: [] for n in names}
    for p in prompts:
        for n in random.Random(content_hash(seed, p.prompt_id)).sample(names, models_per_prompt):
            out[n].append(p)
    return out


def shard_key(spec: GeneratorSpec, chunk: ShardInfo, generators: list[GeneratorSpec],
              models_per_prompt: int | None, seed: int) -> str:
    """A member's shard for a prompt chunk: its settings and the chunk's content, and, when members
    are drawn per prompt, what decides the draw."""
    draw = None
    if models_per_prompt and models_per_prompt < len(generators):
        draw = (models_per_prompt, seed, [g.name for g in generators])
    return content_hash(spec.settings_hash(), chunk.sha, draw)


@dataclass
class Unit:
    """One member's shard for one prompt chunk, and its state."""

    spec: GeneratorSpec
    chunk: ShardInfo
    key: str
    info: ShardInfo | None  # None: missing

    @property
    def todo(self) -> bool:
        return self.info is None or self.info.retryable > 0


def plan_generation(prompts: Manifest, generators: list[GeneratorSpec], store: RunStore,
                    models_per_prompt: int | None = None, seed: int = 0) -> list[Unit]:
    """Every (chunk, member) shard with its state, from the shards' metadata alone."""
    units = []
    for chunk in prompts.shards:
        for spec in generators:
            key = shard_key(spec, chunk, generators, models_per_prompt, seed)
            units.append(Unit(spec, chunk, key, store.info(STAGE, key, Completion)))
    return units


def manifest_of(units: list[Unit]) -> Manifest:
    return Manifest(stage=STAGE, shards=[u.info for u in units if u.info is not None])


def generate(prompts: Manifest, generators: list[GeneratorSpec], store: RunStore, engines: EnginePool | None = None,
             default_engine: EngineSettings | None = None, models_per_prompt: int | None = None, seed: int = 0,
             last: str | None = None, report: Reporter = NULL) -> Manifest:
    """Answer every prompt chunk with its members; returns the completions' manifest."""
    units = plan_generation(prompts, generators, store, models_per_prompt, seed)
    todo = [u for u in units if u.todo]
    for member in generators:  # not `spec`: a stage error names the member from the frames it meets
        mine = [u for u in units if u.spec is member]
        report.note(f"{member.name}: {len(mine) - sum(u.todo for u in mine)} of {len(mine)} shards already done")
    for line in store.damaged_notes(STAGE, [u.key for u in todo]):
        report.note(line)
    if todo:
        own = engines is None
        engines = engines or EnginePool(seed=seed)
        try:
            for group in _by_engine(todo, default_engine, engines, last):
                _run_engine_group(group, generators, store, engines, default_engine, models_per_prompt, seed, report)
        finally:
            if own:
                engines.close()
    return manifest_of(units)


def _by_engine(todo: list[Unit], default: EngineSettings | None, engines: EnginePool,
               last: str | None) -> list[list[Unit]]:
    """Units grouped by the engine they run on: an engine already loaded first, `last` at the end."""
    groups: dict[str, list[Unit]] = {}
    for u in todo:
        groups.setdefault(u.spec.engine_spec(default).key, []).append(u)

    def order(key: str) -> int:
        spec = groups[key][0].spec.engine_spec(default)
        return 2 if key == last else 0 if engines.is_loaded(spec) else 1

    return [groups[k] for k in sorted(groups, key=order)]


def engine_order(todo: list[Unit], default: EngineSettings | None, engines: EnginePool,
                 last: str | None) -> list[EngineSpec]:
    """The engines `generate` uses for these pending units, in the order it uses them."""
    return [group[0].spec.engine_spec(default) for group in _by_engine(todo, default, engines, last)]


def _run_engine_group(units: list[Unit], generators: list[GeneratorSpec], store: RunStore, engines: EnginePool,
                      default: EngineSettings | None, models_per_prompt: int | None, seed: int,
                      report: Reporter) -> None:
    """All pending shards of one engine, chunk by chunk (memory: one chunk); each chunk's members
    go to the engine in one call (several chunks in one call for an engine with a `window`, such
    as the Batch API's)."""
    engine = engines.get(units[0].spec.engine_spec(default), store.root)
    by_chunk: dict[str, list[Unit]] = {}
    for u in units:
        by_chunk.setdefault(u.chunk.key, []).append(u)
    advance = report.task("+".join(dict.fromkeys(u.spec.name for u in units)),
                          rows_to_send(units, generators, models_per_prompt))
    wanted, jobs = window(engine), []  # (unit, prompts to send, its shard from an earlier run)

    def flush() -> None:
        if not jobs:
            return
        results = iter(engine.generate([request(u.spec, p) for u, mine, _ in jobs for p in mine], advance))
        for u, mine, old in jobs:
            u.info = store.write(STAGE, u.key, merged(u.spec, mine, old, results), group=u.chunk.key, name=u.spec.name)
        jobs.clear()

    for chunk_units in by_chunk.values():  # chunks go out together up to the engine's window
        prompts = store.read(PROMPTS, chunk_units[0].chunk.key, Prompt)
        assigned = assign(prompts, generators, models_per_prompt, seed)
        for u in chunk_units:
            old = store.read(STAGE, u.key, Completion) if u.info is not None else None
            jobs.append((u, to_send(assigned[u.spec.name], old), old))
        if sum(len(mine) for _, mine, _ in jobs) >= wanted:
            flush()
    flush()


def rows_to_send(units: list[Unit], generators: list[GeneratorSpec], models_per_prompt: int | None) -> int:
    """About how many requests these units send: a progress bar's total."""
    share = min(models_per_prompt or len(generators), len(generators)) / len(generators)
    return sum(u.info.retryable if u.info else round(u.chunk.rows * share) for u in units)


def to_send(mine: list[Prompt], old: list[Completion] | None) -> list[Prompt]:
    """A member's prompts of a chunk: all of them, or with an earlier shard only its transiently failed rows."""
    again = {c.prompt_id for c in old if c.retryable} if old is not None else None
    return [p for p in mine if again is None or p.prompt_id in again]


def merged(spec: GeneratorSpec, mine: list[Prompt], old: list[Completion] | None, results) -> list[Completion]:
    """A member's shard: the answers to `mine` (taken from the `results` iterator), in place of the
    failed rows of `old` when there is one."""
    settings = spec.settings_hash()
    new = [completion(spec, settings, p, next(results)) for p in mine]
    if old is not None:  # only the failed rows went out again
        redone = {c.prompt_id: c for c in new}
        new = [redone.get(c.prompt_id, c) for c in old]
    return new


def answer_chunk(engine, specs: list[GeneratorSpec], prompts: list[Prompt], old: list[list[Completion] | None],
                 generators: list[GeneratorSpec], models_per_prompt: int | None, seed: int,
                 progress=None) -> list[list[Completion]]:
    """One prompt chunk's shards for the members `specs` (all on `engine`, sent in one call, so
    vLLM batches them together; a Ray worker's unit of work). `old[i]` is member i's shard from an
    earlier run, or None: then only its rows that failed transiently are sent again."""
    assigned = assign(prompts, generators, models_per_prompt, seed)
    jobs = [(spec, to_send(assigned[spec.name], before), before) for spec, before in zip(specs, old)]
    results = iter(engine.generate([request(spec, p) for spec, mine, _ in jobs for p in mine], progress))
    return [merged(spec, mine, before, results) for spec, mine, before in jobs]
