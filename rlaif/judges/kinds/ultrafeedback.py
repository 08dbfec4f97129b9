"""UltraFeedback's fine-grained rating: each completion rated 1-5 on each aspect, with a rationale.

    inputs    a prompt and its completions
    mode      per_completion: one request per completion per aspect (small local judges);
              joint: one request per prompt per aspect rating all its completions at once, as
              UltraFeedback's own prompts did: 4 requests per prompt instead of 16 with 4
              completions (the default on a hosted endpoint). The completions are shown in a
              seeded random order, recorded in each rating (`order`), so order effects average out.
    options   aspects: which of the four to rate (default: all)
    template  prompts/templates/ultrafeedback_rating.v1.jinja, or ultrafeedback_joint.v1.jinja
              (UltraFeedback's four aspects and their 1-5 scales; our wording), rendered per aspect
    output    {"rating": 1-5, "rationale": "..."}, or {"text_1": {...}, "text_2": {...}, ...} jointly
              (JSON schema; the rationale bounded where the server enforces it, and by the
              instruction and the max_tokens room everywhere, so max_tokens never cuts a verdict off)
    record    a Judgement per completion with one AspectRating per aspect; its score is the mean
              over aspects (Argilla's Notus), or one aspect (binarize.aspect); per-completion
              rating-token probabilities in either mode, where the engine gives log-probs

Reference: Cui et al., 2023, "UltraFeedback: Boosting Language Models with High-quality Feedback".
"""

from __future__ import annotations

import random
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from rlaif.core.records import content_hash, derive_seed
from rlaif.judges.base import Answer, Ask, PointwiseKind, pointwise_judgement
from rlaif.judges.parsing import json_format, joint_format

ASPECTS = ("helpfulness", "honesty", "instruction_following", "truthfulness")
JOINT_TEMPLATE = "ultrafeedback_joint"


class RatingOutput(BaseModel):
    """UltraFeedback fine-grained rating of one aspect."""

    model_config = ConfigDict(extra="forbid")

    rating: Literal[1, 2, 3, 4, 5]
    rationale: str = Field(max_length=200)  # bounded: JSON cut off by max_tokens does not parse


RATING = json_format(RatingOutput, "rating", "rationale", ("1", "2", "3", "4", "5"), quoted=False)


class UltraFeedbackOptions(BaseModel):
    """The judge block's `options:` for this kind."""

    model_config = ConfigDict(extra="forbid")

    aspects: list[str] = Field(default_factory=lambda: list(ASPECTS), min_length=1)  # which of the four to rate

    @field_validator("aspects")
    @classmethod
    def _known_aspects(cls, aspects: list[str]) -> list[str]:
        unknown = sorted(set(aspects) - set(ASPECTS))
        if unknown:
            raise ValueError(f"unknown aspects {unknown} (UltraFeedback's: {list(ASPECTS)})")
        return aspects


def shown(spec, prompt, ok: list, aspect: str) -> list:
    """The completions in the order a joint ask shows them: a permutation seeded by the judge's seed,
    the prompt, the aspect and the completions."""
    ids = sorted(c.completion_id for c in ok)
    return random.Random(derive_seed(spec.sampling.seed, prompt.prompt_id, aspect, ids)).sample(ok, len(ok))


def joint_key(order: list, aspect: str) -> str:
    return f"{content_hash(sorted(c.completion_id for c in order))}|{aspect}"


class UltraFeedback(PointwiseKind):
    name, template, version, max_tokens, scale = "ultrafeedback", "ultrafeedback_rating", "v1", 96, (1, 5)
    modes = ("per_completion", "joint")
    options = UltraFeedbackOptions

    def default_mode(self, spec):
        return "joint" if spec.endpoint is not None and spec.endpoint.hosted else "per_completion"

    def default_template(self, spec):
        return JOINT_TEMPLATE if spec.mode == "joint" else self.template

    def output_format(self, spec):
        return RATING

    def hash_parts(self, spec):
        return (sorted(spec.options.aspects),) + (("joint",) if spec.mode == "joint" else ())

    def completion_asks(self, spec, prompt, c):
        t = self.template_for(spec)
        return [(aspect, [{"role": "user", "content": t.render(aspect=aspect, instruction=prompt.text,
                                                                 response=c.text).strip()}])
                for aspect in spec.options.aspects]

    def asks(self, spec, prompt, completions):
        if spec.mode != "joint":
            return super().asks(spec, prompt, completions)
        ok = [c for c in completions if c.ok]
        if not ok:
            return []
        t, fmt = self.template_for(spec), joint_format(RATING, len(ok))
        out = []
        for aspect in spec.options.aspects:
            order = shown(spec, prompt, ok, aspect)
            text = t.render(aspect=aspect, instruction=prompt.text, texts=[c.text for c in order]).strip()
            out.append(Ask(joint_key(order, aspect), tuple(c.completion_id for c in order),
                           [{"role": "user", "content": text}], fmt,
                           max_tokens=spec.sampling.max_tokens * len(ok) + 16))  # room for every verdict
        return out

    def records(self, spec, settings, prompt, completions, answers):
        if spec.mode != "joint":
            return super().records(spec, settings, prompt, completions, answers)
        ok = [c for c in completions if c.ok]
        answers_by_completion: dict[str, dict[str, Answer]] = {c.completion_id: {} for c in ok}
        orders: dict[str, dict[str, list[str]]] = {c.completion_id: {} for c in ok}
        for aspect in spec.options.aspects:
            order = shown(spec, prompt, ok, aspect)
            a = answers.get(joint_key(order, aspect), Answer(None, error="no answer"))
            for i, c in enumerate(order, 1):  # each completion's share of the joint answer
                answers_by_completion[c.completion_id][aspect] = Answer(None, a.retries, a.error, a.retryable) if a.parsed is None \
                    else Answer(a.parsed.items[f"text_{i}"], a.retries)
                orders[c.completion_id][aspect] = [x.completion_id for x in order]
        return [pointwise_judgement(spec, settings, self.scale, c, answers_by_completion.get(c.completion_id, {}),
                                    orders.get(c.completion_id)) for c in completions]
