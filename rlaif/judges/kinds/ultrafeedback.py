"""UltraFeedback's fine-grained rating: each completion rated 1-5 on each aspect, with a rationale.

    inputs    a prompt and one completion
    template  prompts/templates/ultrafeedback_rating.v1.jinja (UltraFeedback's four aspects and
              their 1-5 scales; our wording), rendered once per aspect
    output    {"rating": 1-5, "rationale": "..."} (JSON schema; the rationale bounded so max_tokens
              never cuts the verdict off)
    record    a Judgement with one AspectRating per aspect; its score is the mean over aspects
              (Argilla's Notus), or one aspect (binarize.aspect)

Reference: Cui et al., 2023, "UltraFeedback: Boosting Language Models with High-quality Feedback".
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from rlaif.judges.base import PointwiseKind
from rlaif.judges.parsing import json_format

ASPECTS = ("helpfulness", "honesty", "instruction_following", "truthfulness")


class RatingOutput(BaseModel):
    """UltraFeedback fine-grained rating of one aspect."""

    model_config = ConfigDict(extra="forbid")

    rating: Literal[1, 2, 3, 4, 5]
    rationale: str = Field(max_length=200)  # bounded: JSON cut off by max_tokens does not parse


RATING = json_format(RatingOutput, "rating", "rationale", ("1", "2", "3", "4", "5"), quoted=False)


class UltraFeedback(PointwiseKind):
    name, template, version, max_tokens, scale = "ultrafeedback", "ultrafeedback_rating", "v1", 96, (1, 5)

    def output_format(self, spec):
        return RATING

    def hash_parts(self, spec):
        return (sorted(spec.aspects),)

    def completion_asks(self, spec, prompt, c):
        t = self.template_for(spec)
        return [(aspect, [{"role": "user", "content": t.render(aspect=aspect, instruction=prompt.text,
                                                                 response=c.text).strip()}])
                for aspect in spec.aspects]


KINDS = [UltraFeedback()]
