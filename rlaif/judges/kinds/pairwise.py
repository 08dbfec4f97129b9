"""A pairwise preference: which of two responses is better, after a short reason.

    inputs    a prompt and two completions, asked in both orders
    template  prompts/templates/pairwise.v1.jinja (after the RLAIF paper; our wording)
    output    {"rationale": "...", "better": "A" | "B"} (JSON schema)
    record    a PairJudgement: the orders must agree, else a tie; p_a = P(a better) averaged over
              both orders from the verdict token's probabilities

Reference: Lee et al., 2023, "RLAIF: Scaling Reinforcement Learning from Human Feedback with AI Feedback".
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from rlaif.judges.base import PairwiseKind
from rlaif.judges.parsing import json_format


class PairwiseOutput(BaseModel):
    """Which of two responses is better, after a short reason (RLAIF paper style)."""

    model_config = ConfigDict(extra="forbid")

    rationale: str = Field(max_length=200)
    better: Literal["A", "B"]


PAIRWISE = json_format(PairwiseOutput, "better", "rationale", ("A", "B"), quoted=True)


class Pairwise(PairwiseKind):
    name, template, version, max_tokens = "pairwise", "pairwise", "v1", 96

    def output_format(self, spec):
        return PAIRWISE

    def pair_messages(self, spec, prompt, first, second):
        text = self.template_for(spec).render(instruction=prompt.text, response_a=first.text, response_b=second.text)
        return [{"role": "user", "content": text.strip()}]
