"""A judge kind in one file, with its template beside it: how concise a completion is, 1-3.

    inputs    a prompt and one completion
    options   max_words: the length the template calls concise (in the settings hash, as every option is)
    template  conciseness.v1.jinja, next to this file (`template_dir`)
    output    {"reason": "...", "concise": 1-3} (JSON schema)
    score     the sampled verdict, whatever the score source: on a 3-point scale the verdict
              token's probabilities are this kind's to ignore (its own score rule)

Defining the class registers it; a recipe then names it with `kind: conciseness`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from rlaif.judges.base import PointwiseKind
from rlaif.judges.parsing import json_format


class ConcisenessOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(max_length=120)
    concise: Literal[1, 2, 3]


CONCISENESS = json_format(ConcisenessOutput, "concise", "reason", ("1", "2", "3"), quoted=False)


class ConcisenessOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_words: int = Field(50, ge=1)


class Conciseness(PointwiseKind):
    name, template, version, max_tokens, scale = "conciseness", "conciseness", "v1", 64, (1, 3)
    template_dir = Path(__file__).parent
    options = ConcisenessOptions

    def output_format(self, spec):
        return CONCISENESS

    def completion_asks(self, spec, prompt, c):
        text = self.template_for(spec).render(instruction=prompt.text, response=c.text,
                                              max_words=spec.options.max_words)
        return [("concise", [{"role": "user", "content": text.strip()}])]

    def score(self, j, source="auto", aspect=None):
        return j.score("sampled", aspect)
