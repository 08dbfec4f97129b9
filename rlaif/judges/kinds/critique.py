"""UltraFeedback's critique: written feedback first, then an overall score 1-10.

    inputs    a prompt and one completion
    template  prompts/templates/ultrafeedback_critique.v1.jinja (our wording)
    output    {"critique": "...", "score": 1-10} (JSON schema; the critique bounded)
    record    a Judgement with one aspect, `overall`: the score Zephyr's binarization used

Reference: Cui et al., 2023 (UltraFeedback); Tunstall et al., 2023 (Zephyr) binarized on it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from rlaif.judges.base import PointwiseKind
from rlaif.judges.parsing import json_format


class CritiqueOutput(BaseModel):
    """UltraFeedback critique: written feedback first, then the overall score it leads to."""

    model_config = ConfigDict(extra="forbid")

    critique: str = Field(max_length=400)
    score: Literal[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]


CRITIQUE = json_format(CritiqueOutput, "score", "critique", tuple(str(i) for i in range(1, 11)), quoted=False)


class Critique(PointwiseKind):
    name, template, version, max_tokens, scale = "critique", "ultrafeedback_critique", "v1", 160, (1, 10)

    def output_format(self, spec):
        return CRITIQUE

    def completion_asks(self, spec, prompt, c):
        text = self.template_for(spec).render(instruction=prompt.text, response=c.text)
        return [("overall", [{"role": "user", "content": text.strip()}])]
