"""A judge as a recipe writes it: which kind, which model, which template version, which settings.

One `JudgeSpec` describes every kind, so swapping a judge is swapping a block of YAML:

    kind               rates                      verdict                           template
    ultrafeedback      each completion, per aspect 1-5 + rationale per aspect        ultrafeedback_rating
    critique           each completion             critique + overall 1-10           ultrafeedback_critique
    mt_bench_single    each completion             explanation + [[1-10]]            MT-Bench single-v1
    pairwise           two completions, both orders "A" or "B" + rationale          pairwise
    mt_bench_pairwise  two completions, both orders explanation + [[A]]/[[B]]/[[C]]  MT-Bench pair-v2
    reward_model       each completion             a sequence-classification score   (the model's chat template)

Argilla's Notus averaging is not a kind of its own: it is the `ultrafeedback` kind's score, the mean
of the aspect ratings (`Judgement.score`), and binarization's default.

The settings hash covers everything that shapes a verdict (kind, model, where it runs, template
name + version + content hash, sampling, constraints), so changing any of them re-judges.
"""

from __future__ import annotations

import json
from importlib.resources import files
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from generation.ensemble import Sampling
from generation.records import content_hash
from generation.remote import Endpoint
from generation.templates import Template, load_template

JudgeKind = Literal["ultrafeedback", "critique", "mt_bench_single", "pairwise", "mt_bench_pairwise",
                    "reward_model"]
Aspect = Literal["helpfulness", "honesty", "instruction_following", "truthfulness"]
ASPECTS: tuple[Aspect, ...] = ("helpfulness", "honesty", "instruction_following", "truthfulness")
PAIRWISE_KINDS = ("pairwise", "mt_bench_pairwise")

# kind -> (template, version, max_tokens): room for the bounded free text plus the JSON around it
DEFAULTS = {
    "ultrafeedback": ("ultrafeedback_rating", "v1", 96),
    "critique": ("ultrafeedback_critique", "v1", 160),
    "mt_bench_single": ("single-v1", "fastchat", 160),
    "pairwise": ("pairwise", "v1", 96),
    "mt_bench_pairwise": ("pair-v2", "fastchat", 160),
    "reward_model": ("chat_template", "model", 1),
}
MT_BENCH_FILE = "mt_bench_judge_prompts.jsonl"


class JudgeSpec(BaseModel):
    """A recipe's judge block (an item of `judges:`)."""

    model_config = ConfigDict(extra="forbid")

    name: str  # how records, the run directory and the dataset name this judge
    kind: JudgeKind = "ultrafeedback"
    model: str  # bundled name, local dir, hub id, or the endpoint's model name
    endpoint: Endpoint | None = None  # set: judge through an OpenAI-compatible server
    aspects: list[Aspect] = Field(default_factory=lambda: list(ASPECTS), min_length=1)  # ultrafeedback
    template: str | None = None  # default: the kind's template (table above)
    template_version: str | None = None
    sampling: Sampling | None = None  # default: greedy, the kind's max_tokens
    top_logprobs: int = Field(20, ge=5, le=20)  # must cover the verdict tokens
    structured: bool = True  # constrain output (guided JSON / regex / response_format); False: parse free text
    retries: int = Field(2, ge=0)  # re-asks for an output that did not parse
    retry_temperature: float = Field(0.7, ge=0)  # a re-ask at temperature 0 would write the same text
    explanation_chars: int = Field(400, ge=0)  # MT-Bench kinds: bound on the text before [[verdict]]
    max_length: int = Field(2048, ge=16)  # reward_model: tokens per scored conversation
    batch_size: int = Field(8, ge=1)  # reward_model

    @model_validator(mode="after")
    def _kind_defaults(self) -> "JudgeSpec":
        template, version, max_tokens = DEFAULTS[self.kind]
        self.template = self.template or template
        self.template_version = self.template_version or version
        if self.sampling is None:
            self.sampling = Sampling(temperature=0.0, max_tokens=max_tokens)
        if self.kind == "reward_model" and self.endpoint is not None:
            raise ValueError("a reward_model judge runs locally (transformers); it takes no endpoint")
        if self.kind.startswith("mt_bench"):
            mt_bench_prompt(self.template)  # fails early, naming the prompts there are
        elif self.kind != "reward_model":
            load_template(self.template, self.template_version)
        return self

    @property
    def pairwise(self) -> bool:
        return self.kind in PAIRWISE_KINDS

    def judge_template(self) -> Template:
        if self.kind.startswith("mt_bench"):
            entries = [mt_bench_prompt(self.template)]
            try:  # the variant used for second-turn prompts shapes verdicts too
                entries.append(mt_bench_prompt(self.template + "-multi-turn"))
            except ValueError:
                pass
            return Template(f"mt_bench:{self.template}", self.template_version, json.dumps(entries, sort_keys=True))
        if self.kind == "reward_model":
            return Template("chat_template", "model", "")
        return load_template(self.template, self.template_version)

    def settings_hash(self) -> str:
        t = self.judge_template()
        where = self.endpoint.base_url if self.endpoint else None  # never the key
        return content_hash(self.kind, self.model, where, sorted(self.aspects) if self.kind == "ultrafeedback" else None,
                            t.name, t.version, t.hash, self.sampling, self.top_logprobs, self.structured,
                            self.retries, self.retry_temperature, self.explanation_chars,
                            self.max_length if self.kind == "reward_model" else None)


def mt_bench_prompt(name: str) -> dict:
    """One prompt of FastChat's MT-Bench judge prompt file (prompts/judges), by its name."""
    path = files("prompts").joinpath("judges", MT_BENCH_FILE)
    prompts = {json.loads(line)["name"]: json.loads(line) for line in path.read_text().splitlines() if line.strip()}
    if name not in prompts:
        raise ValueError(f"no MT-Bench judge prompt {name!r} in prompts/judges/{MT_BENCH_FILE} (have: {sorted(prompts)})")
    return prompts[name]
