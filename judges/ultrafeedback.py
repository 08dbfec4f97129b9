"""UltraFeedback fine-grained ratings: four aspects, 1 to 5 each, with a rationale.

Inputs: a prompt and one completion. Outputs: a `Judgement` holding, per aspect, the sampled
rating, its rationale, the judge's probabilities for each rating and their expected value.
Messages are built from the versioned jinja template `prompts/templates/ultrafeedback_rating`;
output is constrained to `RatingOutput`'s JSON schema by vLLM's structured decoding, and parsed
by `judges.parsing`. A completion that failed to generate gets a `failed` judgement, never a score.
"""

from __future__ import annotations

import logging
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from generation.engines import EngineSettings, VLLMEngine
from generation.ensemble import Sampling
from generation.models import resolve_model
from generation.records import Completion, Judgement, Prompt, content_hash
from generation.store import RunStore
from generation.templates import load_template
from judges.parsing import RatingOutput, parse_rating, vllm_token_logprobs

log = logging.getLogger(__name__)
STAGE = "judgements"
Aspect = Literal["helpfulness", "honesty", "instruction_following", "truthfulness"]
ASPECTS: tuple[Aspect, ...] = ("helpfulness", "honesty", "instruction_following", "truthfulness")


class JudgeSpec(BaseModel):
    """A judge, as written in a recipe's `judge:` block."""

    model_config = ConfigDict(extra="forbid")

    name: str
    kind: Literal["ultrafeedback"] = "ultrafeedback"
    model: str
    aspects: list[Aspect] = Field(default_factory=lambda: list(ASPECTS), min_length=1)
    template: str = "ultrafeedback_rating"
    template_version: str = "v1"
    sampling: Sampling = Field(default_factory=lambda: Sampling(temperature=0.0, max_tokens=96))
    top_logprobs: int = Field(20, ge=5, le=20)  # must cover the five rating tokens

    def settings_hash(self) -> str:
        template = load_template(self.template, self.template_version)
        return content_hash(self.kind, self.model, self.aspects, template.name, template.version,
                            template.hash, self.sampling, self.top_logprobs)


def build_messages(spec: JudgeSpec, aspect: str, prompt: Prompt, completion: Completion) -> list[dict]:
    text = load_template(spec.template, spec.template_version).render(
        aspect=aspect, instruction=prompt.text, response=completion.text)
    return [{"role": "user", "content": text.strip()}]


def judge_shard(engine: VLLMEngine, spec: JudgeSpec, prompts: dict[str, Prompt],
                completions: list[Completion], progress: bool = True) -> list[Judgement]:
    """Rate one shard of completions on every aspect in one engine call."""
    from vllm import SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    template = load_template(spec.template, spec.template_version)
    settings = spec.settings_hash()
    tok = engine.tokenizer
    params = SamplingParams(
        temperature=spec.sampling.temperature, top_p=spec.sampling.top_p,
        max_tokens=spec.sampling.max_tokens, seed=spec.sampling.seed, logprobs=spec.top_logprobs,
        structured_outputs=StructuredOutputsParams(json=RatingOutput.model_json_schema()),
    )
    requests, index = [], []
    for c in completions:
        if not c.ok:
            continue
        for aspect in spec.aspects:
            msgs = build_messages(spec, aspect, prompts[c.prompt_id], c)
            text = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
            requests.append(list(tok(text, add_special_tokens=False).input_ids))
            index.append((c.completion_id, aspect))
    outputs = engine.generate(requests, params, progress=progress) if requests else []
    by_completion: dict[str, dict] = {}
    for (cid, aspect), out in zip(index, outputs):
        o = out.outputs[0]
        by_completion.setdefault(cid, {})[aspect] = parse_rating(o.text, vllm_token_logprobs(o))

    judgements = []
    for c in completions:
        aspects = by_completion.get(c.completion_id, {})
        if not c.ok:
            status, error = "failed", f"completion failed: {c.error}"
        elif all(a.rating is not None for a in aspects.values()):
            status, error = "parsed", None
        else:
            status = "unparsed"
            error = "unparsed aspects: " + ", ".join(k for k, a in aspects.items() if a.rating is None)
        judgements.append(Judgement(
            judgement_id=content_hash(c.completion_id, settings), completion_id=c.completion_id,
            prompt_id=c.prompt_id, model=c.model, judge=spec.name, judge_model=spec.model,
            template=template.name, template_version=template.version, template_hash=template.hash,
            settings_hash=settings, sampling=spec.sampling.model_dump(), aspects=aspects,
            status=status, error=error,
        ))
    return judgements


def judge(prompts: list[Prompt], completions: list[Completion], spec: JudgeSpec, store: RunStore,
          engine: EngineSettings | None = None, shard_size: int = 256, seed: int = 0) -> list[Judgement]:
    """Judge every completion; shards already judged with these settings are read back."""
    by_id = {p.prompt_id: p for p in prompts}
    stage = f"{STAGE}/{spec.name}"  # two judges' results sit side by side in the run
    settings = spec.settings_hash()
    # keyed on each completion's text and error too: a row that failed and was regenerated since is
    # judged again, not left with its stale "failed" verdict
    todo = [(content_hash(settings, [(c.completion_id, c.text, c.error) for c in completions[i : i + shard_size]]),
             completions[i : i + shard_size]) for i in range(0, len(completions), shard_size)]
    missing = [(k, s) for k, s in todo if not store.has(stage, k)]
    if missing:
        with VLLMEngine(resolve_model(spec.model), engine, seed=seed, compact_json=True) as eng:
            for key, shard in missing:
                store.write(stage, key, judge_shard(eng, spec, by_id, shard))
    return [j for key, _ in todo for j in store.read(stage, key, Judgement)]
