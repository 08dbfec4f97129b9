"""The generation stage: every prompt answered by every model of an ensemble, shard by shard.

Each ensemble member has its own prompt format (the model's chat template, or URIAL's in-context
alignment prompt for a base model), an optional system prompt, and its own sampling. Models run
one after another and each engine is released before the next loads. A shard whose content hash
is already in the run store is read back instead of generated; a model none of whose shards are
missing is never loaded.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from contextlib import nullcontext
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from generation.engines import EngineSettings, VLLMEngine
from generation.models import resolve_model
from generation.records import Completion, Prompt, content_hash
from generation.remote import Endpoint, run_requests
from generation.store import RunStore
from generation.templates import load_template

log = logging.getLogger(__name__)
STAGE = "completions"
URIAL_STOP = ["```", "# Query"]


class Sampling(BaseModel):
    model_config = ConfigDict(extra="forbid")

    temperature: float = Field(0.7, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(256, ge=1)
    seed: int = 0


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

    def settings_hash(self) -> str:
        template = load_template("urial", self.urial_version).hash if self.format == "urial" else None
        where = self.endpoint.base_url if self.endpoint else None  # the key is never part of a hash
        return content_hash(self.model, where, self.format, self.system_prompt, template, self.sampling)


def chat_messages(spec: GeneratorSpec, prompt: Prompt) -> list[dict]:
    messages = [m.model_dump() for m in prompt.messages]
    if spec.system_prompt and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": spec.system_prompt}] + messages
    return messages


def render_prompt(spec: GeneratorSpec, tokenizer, prompt: Prompt) -> list[int]:
    """Token ids for one prompt in the member's own format."""
    if spec.format == "chat":
        text = tokenizer.apply_chat_template(chat_messages(spec, prompt), add_generation_prompt=True, tokenize=False)
        return list(tokenizer(text, add_special_tokens=False).input_ids)  # the template adds its own
    return list(tokenizer(urial_text(spec, prompt)).input_ids)


def urial_text(spec: GeneratorSpec, prompt: Prompt) -> str:
    """URIAL: a preamble and three worked examples, then the conversation as Query/Answer blocks."""
    text = load_template("urial", spec.urial_version).text
    if spec.system_prompt:
        # before the first example block (the preamble itself mentions "# Query:" in a sentence)
        text = text.replace("\n# Query:\n", "\n" + spec.system_prompt.strip() + "\n\n# Query:\n", 1)
    for m in prompt.messages:
        if m.role == "user":
            text += f"# Query:\n```\n{m.content}\n```\n\n"
        elif m.role == "assistant":
            text += f"# Answer:\n```\n{m.content}\n```\n\n"
    text += "# Answer:\n```\n"
    return text


def _request_seed(seed: int, prompt: Prompt) -> int:
    # Per prompt, not per batch: the same prompt gets the same draw whatever shard it lands in.
    return int(content_hash(seed, prompt.prompt_id, prompt.hash), 16) % (2**31)


def _base(spec: GeneratorSpec, p: Prompt, settings: str, prompt_tokens: int = 0) -> dict:
    return dict(completion_id=content_hash(p.prompt_id, p.hash, settings), prompt_id=p.prompt_id,
                prompt_hash=p.hash, model=spec.name, settings_hash=settings, prompt_tokens=prompt_tokens)


def generate_remote_shard(spec: GeneratorSpec, prompts: list[Prompt]) -> list[Completion]:
    """Answer one shard through the member's OpenAI-compatible endpoint."""
    s, settings = spec.sampling, spec.settings_hash()
    requests = []
    for p in prompts:
        req = dict(temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens, seed=_request_seed(s.seed, p))
        if spec.format == "chat":
            req["messages"] = chat_messages(spec, p)
        else:
            req.update(prompt=urial_text(spec, p), stop=URIAL_STOP)
        requests.append(req)
    results = run_requests(spec.endpoint, spec.model, requests, desc=spec.name)
    return [Completion(**_base(spec, p, settings, r.prompt_tokens), text=r.text.strip() if r.text is not None else None,
                       finish_reason=r.finish_reason, output_tokens=r.output_tokens, error=r.error,
                       retryable=r.retryable) for p, r in zip(prompts, results)]


def generate_shard(engine: VLLMEngine | None, spec: GeneratorSpec, prompts: list[Prompt],
                   progress: bool = True) -> list[Completion]:
    """Answer one shard of prompts with one loaded model. Too-long prompts become error records."""
    if spec.endpoint is not None:
        return generate_remote_shard(spec, prompts)
    from vllm import SamplingParams

    settings = spec.settings_hash()
    records: dict[int, Completion] = {}
    batch_ids, batch_params, batch_index = [], [], []
    for i, p in enumerate(prompts):
        ids = render_prompt(spec, engine.tokenizer, p)
        base = _base(spec, p, settings, len(ids))
        room = engine.max_model_len - len(ids)
        if room < 1:
            log.warning("prompt %s: %d tokens do not fit %s's context of %d; skipped for this model",
                        p.prompt_id, len(ids), spec.name, engine.max_model_len)
            records[i] = Completion(**base, error=f"prompt of {len(ids)} tokens exceeds the context of {engine.max_model_len}")
            continue
        s = spec.sampling
        batch_params.append(SamplingParams(
            temperature=s.temperature, top_p=s.top_p, max_tokens=min(s.max_tokens, room),
            seed=_request_seed(s.seed, p), stop=URIAL_STOP if spec.format == "urial" else None,
        ))
        batch_ids.append(ids)
        batch_index.append((i, base))
    if batch_ids:
        outputs = engine.generate(batch_ids, batch_params, progress=progress)
        for (i, base), out in zip(batch_index, outputs):
            o = out.outputs[0]
            records[i] = Completion(**base, text=o.text.strip(), finish_reason=o.finish_reason,
                                    output_tokens=len(o.token_ids))
    return [records[i] for i in range(len(prompts))]


def shards(prompts: list[Prompt], size: int) -> list[list[Prompt]]:
    return [prompts[i : i + size] for i in range(0, len(prompts), size)]


def shard_key(spec: GeneratorSpec, shard: list[Prompt]) -> str:
    return content_hash(spec.settings_hash(), [(p.prompt_id, p.hash) for p in shard])


def assign_models(prompts: list[Prompt], generators: list[GeneratorSpec], models_per_prompt: int | None,
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


def generate(prompts: list[Prompt], generators: list[GeneratorSpec], store: RunStore,
             engine: EngineSettings | None = None, shard_size: int = 256, seed: int = 0,
             on_model: Callable[[str, str], None] | None = None,
             models_per_prompt: int | None = None) -> list[Completion]:
    """Every prompt answered by its members; finished shards are read, not recomputed, and rows
    that failed transiently on an earlier run are generated again."""
    completions: list[Completion] = []
    assigned = assign_models(prompts, generators, models_per_prompt, seed)
    for spec in generators:
        todo = [(shard_key(spec, s), s) for s in shards(assigned[spec.name], shard_size)]
        pending = []
        for key, shard in todo:
            old = store.read(STAGE, key, Completion) if store.has(STAGE, key) else None
            if old is None or any(c.retryable for c in old):
                pending.append((key, shard, old))
        if on_model:
            on_model(spec.name, f"{len(todo) - len(pending)} of {len(todo)} shards already done")
        if pending:
            started = time.perf_counter()
            local = spec.endpoint is None
            with VLLMEngine(resolve_model(spec.model), engine, seed=seed) if local else nullcontext() as eng:
                for key, shard, old in pending:
                    if old is None:
                        new = generate_shard(eng, spec, shard)
                    else:  # only the failed rows go out again
                        again = [p for p, c in zip(shard, old) if c.retryable]
                        redone = {c.prompt_id: c for c in generate_shard(eng, spec, again)}
                        new = [redone.get(c.prompt_id, c) for c in old]
                    store.write(STAGE, key, new)
            log.info("%s: %d shards in %.1f s", spec.name, len(pending), time.perf_counter() - started)
        for key, _ in todo:
            completions.extend(store.read(STAGE, key, Completion))
    return completions


def stored_completions(prompts: list[Prompt], generators: list[GeneratorSpec], store: RunStore,
                       shard_size: int = 256, seed: int = 0, models_per_prompt: int | None = None
                       ) -> tuple[list[Completion], list[str]]:
    """The completions a run already holds for these prompts and members, without loading a model;
    and the members with shards still missing (so a caller can say what to generate first)."""
    completions, missing = [], []
    assigned = assign_models(prompts, generators, models_per_prompt, seed)
    for spec in generators:
        for shard in shards(assigned[spec.name], shard_size):
            key = shard_key(spec, shard)
            if store.has(STAGE, key):
                completions.extend(store.read(STAGE, key, Completion))
            elif spec.name not in missing:
                missing.append(spec.name)
    return completions, missing
