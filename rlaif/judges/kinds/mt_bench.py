"""MT-Bench's judges, with FastChat's prompts as published (so scores compare with MT-Bench numbers).

    mt_bench_single    a prompt and one completion -> explanation + [[1-10]]   (single-v1)
    mt_bench_pairwise  a prompt and two completions, both orders -> explanation + [[A]], [[B]]
                       or [[C]] (a tie)                                        (pair-v2)

Options: `explanation_chars` (400), the bound on the explanation before the verdict.
A second-turn prompt (a conversation with an earlier answer) uses the `-multi-turn` variant. The
prompts file is FastChat's judge_prompts.jsonl, unchanged (prompts/judges/, Apache-2.0). The output
is held to the format by a regex on engines that take one; elsewhere the tolerant parser reads it, a
rating as FastChat reads it ([[7.5]], or "Rating: [7]" when no [[ ]] is there).

Reference: Zheng et al., 2023, "Judging LLM-as-a-Judge with MT-Bench and Chatbot Arena".
"""

from __future__ import annotations

import json
from functools import lru_cache

from pydantic import BaseModel, ConfigDict, Field

from rlaif.judges.base import PairwiseKind, PointwiseKind
from rlaif.judges.parsing import bracket_format, rating_format
from rlaif.prompts import Template, data_file

FILE = "mt_bench_judge_prompts.jsonl"


class MTBenchOptions(BaseModel):
    """The judge block's `options:` for the MT-Bench kinds."""

    model_config = ConfigDict(extra="forbid")

    explanation_chars: int = Field(400, ge=0)  # bound on the text before [[verdict]] (a small judge rambles)


@lru_cache(maxsize=1)
def _prompts() -> dict[str, dict]:
    lines = data_file("judges", FILE).read_text().splitlines()
    return {json.loads(line)["name"]: json.loads(line) for line in lines if line.strip()}


def mt_bench_prompt(name: str) -> dict:
    """One prompt of FastChat's MT-Bench judge prompt file, by its name."""
    prompts = _prompts()
    if name not in prompts:
        raise ValueError(f"no MT-Bench judge prompt {name!r} in prompts/judges/{FILE} (have: {sorted(prompts)})")
    return prompts[name]


def _template(spec) -> Template:
    entries = [mt_bench_prompt(spec.template)]
    for suffix in ("-multi-turn",):  # the variant for second-turn prompts shapes verdicts too
        if spec.template + suffix in _prompts():
            entries.append(mt_bench_prompt(spec.template + suffix))
    return Template(f"mt_bench:{spec.template}", spec.template_version, json.dumps(entries, sort_keys=True))


def messages(spec, prompt, **answers: str) -> list[dict]:
    """MT-Bench's prompt as published; its multi-turn variant for a second-turn prompt."""
    users = [m.content for m in prompt.messages if m.role == "user"]
    earlier = [m.content for m in prompt.messages if m.role == "assistant"]
    entry = mt_bench_prompt(spec.template)
    if len(users) >= 2 and earlier:
        entry = mt_bench_prompt(spec.template + "-multi-turn")
        values = {"question_1": users[-2], "question_2": users[-1]}
        for k, v in answers.items():  # answer -> answer_1 (shared history), answer_2 (this one)
            values[f"{k}_1"], values[f"{k}_2"] = earlier[-1], v
    else:
        values = {"question": users[-1], **answers}
    return [{"role": "system", "content": entry["system_prompt"]},
            {"role": "user", "content": entry["prompt_template"].format(**values)}]


class MTBenchSingle(PointwiseKind):
    name, template, version, max_tokens, scale = "mt_bench_single", "single-v1", "fastchat", 160, (1, 10)
    options = MTBenchOptions

    def template_for(self, spec):
        return _template(spec)

    def hash_parts(self, spec):
        return (spec.options.explanation_chars,)

    def output_format(self, spec):
        return rating_format(*self.scale, spec.options.explanation_chars)

    def completion_asks(self, spec, prompt, c):
        return [("overall", messages(spec, prompt, answer=c.text))]


class MTBenchPairwise(PairwiseKind):
    name, template, version, max_tokens = "mt_bench_pairwise", "pair-v2", "fastchat", 160
    options = MTBenchOptions

    def template_for(self, spec):
        return _template(spec)

    def hash_parts(self, spec):
        return (spec.options.explanation_chars,)

    def output_format(self, spec):
        return bracket_format(("A", "B", "C"), spec.options.explanation_chars)  # C: a tie

    def pair_messages(self, spec, prompt, first, second):
        return messages(spec, prompt, answer_a=first.text, answer_b=second.text)
