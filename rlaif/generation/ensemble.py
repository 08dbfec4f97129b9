"""The generation stage: every prompt answered by its ensemble members, one prompt chunk at a time.

Each member has its own prompt format (the model's chat template, or URIAL's in-context alignment
prompt for a base model), an optional system prompt, its own sampling, and optionally its own
engine settings. The stage:

    request(spec, prompt) / completion(...)    one member's request for a prompt, and its record
    assign(prompts, generators, K, seed)         which members answer which prompts
    member_shard_key(spec, chunk, ...)                  a member's shard of a prompt chunk

The stage itself (what is done, what to send, in which order) is `generation/stage.py`.

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
from typing import Any, Literal

from pydantic import (BaseModel, ConfigDict, Field, PrivateAttr, ValidationInfo, field_validator, model_serializer,
                      model_validator)

from rlaif.core.records import Completion, Prompt, content_hash, derive_seed, without_unset
from rlaif.core.store import ShardInfo
from rlaif.engines.backend import known_backend
from rlaif.engines.base import EngineSettings, Request, Result, Sampling, output_settings
from rlaif.engines.config import Endpoint
from rlaif.engines.pool import EngineSpec
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
    # which weights `model` holds, where a folder is trained again in place (a round's policy: the hash of
    # what it was trained from), so a retrained model's answers are made again; hashed only when set
    revision: str | None = None
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

    _known_backend = field_validator("engine")(known_backend)

    @model_serializer(mode="wrap")
    def _without_unset_revision(self, handler: Any) -> dict[str, Any]:
        return without_unset(handler(self), "revision")

    def settings_hash(self) -> str:
        template = self.urial_template().hash if self.format == "urial" else None
        where = self.endpoint.base_url if self.endpoint else None  # the key is never part of a hash
        # the engine settings that change what a local model writes (dtype, quantization, ...); absent
        # when none is set, so the hashes of recipes that set none stand
        outputs = output_settings(self.engine_spec(self._engine_default).settings) if self.endpoint is None else {}
        return content_hash(self.name, self.model, where, self.format, self.system_prompt, template, self.sampling,
                            *((outputs,) if outputs else ()), *((("revision", self.revision),) if self.revision else ()))

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


def member_shard_key(spec: GeneratorSpec, chunk: ShardInfo, generators: list[GeneratorSpec],
              models_per_prompt: int | None, seed: int) -> str:
    """A member's shard for a prompt chunk: its settings and the chunk's content, and, when members
    are drawn per prompt, what decides the draw."""
    draw = None
    if models_per_prompt and models_per_prompt < len(generators):
        draw = (models_per_prompt, seed, [g.name for g in generators])
    return content_hash(spec.settings_hash(), chunk.sha, draw)


def to_send(assigned: list[Prompt], old: list[Completion] | None) -> list[Prompt]:
    """A member's prompts of a chunk: all of them, or with an earlier shard only its transiently failed rows."""
    again = {c.prompt_id for c in old if c.retryable} if old is not None else None
    return [p for p in assigned if again is None or p.prompt_id in again]


def merged(spec: GeneratorSpec, asked: list[Prompt], old: list[Completion] | None, results) -> list[Completion]:
    """A member's shard: the answers to `asked` (taken from the `results` iterator), in place of the
    failed rows of `old` when there is one."""
    settings = spec.settings_hash()
    new = [completion(spec, settings, p, next(results)) for p in asked]
    if old is not None:  # only the failed rows went out again
        redone = {c.prompt_id: c for c in new}
        new = [redone.get(c.prompt_id, c) for c in old]
    return new
