"""What a CPU needs to run a GPU recipe: `--set` overrides, each with the reason it is allowed.

A rehearsal runs a recipe's own commands with these appended and nothing else changed: the prompt
count, the dtype, parallelism of 1, the KV cache, answer and sequence lengths, one training step,
QLoRA's 4-bit base (bitsandbytes needs CUDA), and hosted endpoints pointed at the local strict
server. Anything a recipe gets wrong beyond these shows up as it would on the GPU machine: a
misspelled model, a missing split, a field TRL rejects, an unset key variable.

`cpu_overrides(recipe, ...)` reads the validated recipe (recipe/spec.py `Recipe`) and returns the
`key.path=value` strings for `--set`, and the lines that say what was swapped.
"""

from __future__ import annotations

import json
from typing import Any

ROUND_SAMPLES = 2  # the policy's answers per prompt in a rehearsal's round: a best and a worst
HELD_OUT = 2  # held-out prompts of a rehearsal's rounds: every round's model answers and is measured on them
GEN_TOKENS = 24  # answer length of a rehearsal's members: enough to exercise parsing and training
JUDGE_TOKENS = 256  # a judge's structured verdict needs its room
TRAIN_LENGTH = 256
CONTEXT = 4096  # an engine's context at most: 1 GiB of KV cache holds it for the bundled and stand-in models
ENGINE = {"dtype": "float32", "tensor_parallel_size": 1, "pipeline_parallel_size": 1,
          "gpu_memory_utilization": None, "quantization": None, "cpu_kv_cache_gb": 1}
# one step: no room for warmup (a warmup ratio of one step trains it at learning rate 0, and a stage
# whose weights did not move fails)
TRAIN = {"max_steps": 1, "warmup_steps": 0, "per_device_train_batch_size": 2, "gradient_accumulation_steps": 1,
         "dataset_num_proc": None, "logging_steps": 1}


def _set(key: str, value: Any) -> str:
    return f"{key}={json.dumps(value)}"  # JSON is YAML: --set reads it back as the same value


def engine_overrides(prefix: str, engine: Any) -> list[str]:
    """CPU settings for one engine block (the recipe's, or a member's or judge's own)."""
    return [_set(f"{prefix}.{k}", v) for k, v in cpu_engine(engine, everything=prefix == "engine").items()]


def cpu_engine(engine: Any, everything: bool) -> dict[str, Any]:
    """The fields of an engine block a CPU changes: all of them for the recipe's (`everything`), only
    those the block sets for a member's, a judge's or the policy's own (the rest come from the recipe's)."""
    out = {k: v for k, v in ENGINE.items() if everything or k in engine.model_fields_set}
    if (everything or "max_model_len" in engine.model_fields_set) and not 0 < (engine.max_model_len or 0) <= CONTEXT:
        out["max_model_len"] = CONTEXT
    parallel = {k for k in engine.extra if k in ("tensor_parallel_size", "pipeline_parallel_size", "data_parallel_size")}
    if parallel:
        out["extra"] = {k: v for k, v in engine.extra.items() if k not in parallel}
    return out


def cpu_overrides(recipe: Any, prompts: int, base_url: str | None, stages: set[str]) -> tuple[list[str], list[str]]:
    """(the `--set` strings, what they swap in words) for `stages` of "data", "sft", "dpo"."""
    sets, said = [], []
    if "data" in stages and recipe.generators:
        sets += [_set("prompts.limit", min(prompts, recipe.prompts.limit or prompts))]
        said.append(f"prompts: the first {prompts} of {recipe.prompts.source}")
        sets += engine_overrides("engine", recipe.engine)
        for i, g in enumerate(recipe.generators):
            if g.sampling.max_tokens > GEN_TOKENS:
                sets.append(_set(f"generators.{i}.sampling.max_tokens", GEN_TOKENS))
            if g.engine is not None:
                sets += engine_overrides(f"generators.{i}.engine", g.engine)
        said.append(f"answers: at most {GEN_TOKENS} tokens; engines: float32, one device, 1 GiB of KV cache, "
                    f"a context of at most {CONTEXT}")
        if recipe.binarize.test_fraction < 0.5:  # a few prompts: half held out, so evaluate has a test split
            sets.append(_set("binarize.test_fraction", 0.5))
        if recipe.binarize.push_to_hub:
            sets.append(_set("binarize.push_to_hub", None))
            said.append(f"binarize.push_to_hub {recipe.binarize.push_to_hub}: not pushed")
    if "data" in stages and recipe.rounds.on:
        found, lines = rounds_overrides(recipe, prompts)
        sets += found
        said += lines
    for i, j in enumerate(recipe.judges if "data" in stages or "eval" in stages else []):
        if j.sampling is not None and j.sampling.max_tokens > JUDGE_TOKENS and j.endpoint is None:
            sets.append(_set(f"judges.{i}.sampling.max_tokens", JUDGE_TOKENS))
        if j.engine is not None:
            sets += engine_overrides(f"judges.{i}.engine", j.engine)
    for i, member in [(f"generators.{i}", g) for i, g in enumerate(recipe.generators)] + \
                     [(f"judges.{i}", j) for i, j in enumerate(recipe.judges)]:
        if member.endpoint is not None and base_url is not None:
            sets += [_set(f"{i}.endpoint.base_url", base_url), _set(f"{i}.endpoint.base_urls", [])]
            if member.endpoint.batch:
                sets.append(_set(f"{i}.endpoint.batch_poll_s", 0.5))
            said.append(f"{member.name}: {member.endpoint.base_url} -> the local strict server ({member.model})")
    for stage in ("sft", "dpo"):
        spec = getattr(recipe.train, stage)
        if stage not in stages or spec is None:
            continue
        trl = spec.trl()
        sets += [_set(f"train.{stage}.{k}", v) for k, v in TRAIN.items() if trl.get(k) != v]
        if (trl.get("max_length") or TRAIN_LENGTH + 1) > TRAIN_LENGTH:
            sets.append(_set(f"train.{stage}.max_length", TRAIN_LENGTH))
        if spec.lora is not None and spec.lora.load_in_4bit:
            sets.append(_set(f"train.{stage}.lora.load_in_4bit", False))
            said.append(f"train.{stage}: QLoRA's 4-bit base needs CUDA; plain LoRA instead")
        said.append(f"train.{stage}: one step of 2 rows, {TRAIN_LENGTH} tokens, float32 on CPU")
    return sets, said


def rounds_prompts(recipe: Any, prompts: int) -> int:
    """The prompts a rehearsal's rounds draw from the source: round 1's, the held-out ones and
    each later round's fresh ones (flows/rounds.py draw_prompts)."""
    r = recipe.rounds
    if not r.on:
        return prompts
    fresh = prompts * (r.count - 1) if r.prompts == "fresh" else 0
    return prompts + min(r.held_out, HELD_OUT) + fresh


def rounds_overrides(recipe: Any, prompts: int) -> tuple[list[str], list[str]]:
    """A series of rounds at a CPU's size: `prompts` a round, a couple held out, two answers per
    prompt from the policy at the members' answer length, its engine on the CPU. One `--set` of the
    whole block, which a recipe may have written as `rounds: 3`."""
    r = recipe.rounds
    block = {**r.model_dump(mode="json", exclude_unset=True), "count": r.count, "held_out": min(r.held_out, HELD_OUT)}
    if r.prompts == "fresh":
        block["per_round"] = prompts
    if r.samples > ROUND_SAMPLES:
        block["samples"] = ROUND_SAMPLES
    if r.sampling is not None and r.sampling.max_tokens > GEN_TOKENS:
        block["sampling"] = {**block["sampling"], "max_tokens": GEN_TOKENS}
    if r.engine is not None:
        block["engine"] = {**block["engine"], **cpu_engine(r.engine, everything=False)}
    said = [f"rounds: {r.count} of {prompts} prompts each, {block['held_out']} held out, "
            f"{min(r.samples, ROUND_SAMPLES)} answers per prompt from the policy"]
    if r.mt_bench is not None:  # every model's MT-Bench in each measurement: one question, short answers
        block["mt_bench"] = {**block.get("mt_bench", {}), "questions": 1, "max_tokens": GEN_TOKENS}
        said.append(f"rounds.mt_bench: 1 of {r.mt_bench.questions} questions, {GEN_TOKENS}-token answers")
    return [_set("rounds", block)], said
