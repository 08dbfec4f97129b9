"""A recipe's `rounds:` block: iterative (on-policy) dDPO, each round's model answering the next round's prompts.

    rounds: 3                      # shorthand for {count: 3}; 1 (the default) is a plain run
    rounds:
      count: 3                     # round 1 is the plain run; rounds 2.. are on-policy
      prompts: fresh               # fresh: a new draw from the prompt set each round; same: round 1's prompts;
                                   # new: a scheduled refresh's new prompts (`rlaif refresh`, `rlaif deploy`)
      per_round: 24                # fresh: prompts per round (default: as many as round 1 had)
      samples: 4                   # answers per prompt from the policy (round k-1's dDPO model)
      sampling: {temperature: 0.8, max_tokens: 128}   # default: the first generator's sampling
      engine: {replicas: auto}     # the policy's engine block (default: the recipe's `engine:`)
      ensemble: false              # true: the recipe's generators answer beside the policy
      strategy: best_vs_worst_samples   # or policy_vs_ensemble (needs ensemble: true)
      reference: sft               # dDPO's reference: the dSFT model (sft) or round k-1's model (previous)
      held_out: 8                  # prompts kept out of every round, for the per-round win rates
      judge: uf                    # the judge of the measurements (default: the first fixed judge)
      mt_bench: 8                  # MT-Bench of every round's model (and the dSFT model) in its measurement:
                                   # N questions round-robin over the categories (true: all 80; 0 or unset: none)
      mt_bench: {questions: 8, judge: uf, max_tokens: 1024}   # the same, with its judge (default: the
                                   # measurements') and the answers' length (default: FastChat's 1024)

Only the block's shape is checked here; what it asks of the rest of the recipe (a dDPO block, a
fixed judge, ...) is checked by the recipe (recipe/spec.py), and a round's recipe is written by
flows/rounds.py. A judge whose `model:` is `policy` judges each round with that round's policy
(self-rewarding): the model that answers the round's prompts.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_serializer, model_validator

from rlaif.core.records import without_unset
from rlaif.engines.base import EngineSettings, Sampling

POLICY = "policy"  # a judge's `model:` that means "this round's policy"; also the policy members' name


MT_BENCH_QUESTIONS = 80


class RoundsMTBench(BaseModel):
    """`rounds.mt_bench`: MT-Bench in each round's measurement (evaluation/mt_bench.py)."""

    model_config = ConfigDict(extra="forbid")

    questions: int = Field(MT_BENCH_QUESTIONS, ge=1, le=MT_BENCH_QUESTIONS)  # round-robin over the categories
    judge: str | None = None  # default: the measurements' judge
    max_tokens: int = Field(1024, ge=1)  # per answer (FastChat's 1024)


class RoundsSpec(BaseModel):
    """The recipe's `rounds:` block (see the module doc)."""

    model_config = ConfigDict(extra="forbid")

    count: int = Field(1, ge=1)
    prompts: Literal["fresh", "same", "new"] = "fresh"
    per_round: int | None = Field(None, ge=1)
    samples: int = Field(2, ge=1)
    sampling: Sampling | None = None
    engine: EngineSettings | None = None  # the policy's own engine block, over the recipe's (replicas on Ray)
    ensemble: bool = False
    strategy: Literal["best_vs_worst_samples", "policy_vs_ensemble"] = "best_vs_worst_samples"
    reference: Literal["sft", "previous"] = "sft"
    held_out: int = Field(8, ge=0)
    judge: str | None = None
    mt_bench: RoundsMTBench | None = None  # None: no MT-Bench (it and `engine` dumped only when set: core.records.without_unset)

    @model_validator(mode="before")
    @classmethod
    def _count_alone(cls, data: Any) -> Any:
        return {"count": data} if isinstance(data, int) and not isinstance(data, bool) else data

    @field_validator("mt_bench", mode="before")
    @classmethod
    def _questions_alone(cls, value: Any) -> Any:
        """`mt_bench: N` is {questions: N}, `true` all the questions; 0 and `false` are none (unset)."""
        if value is True:
            return {}
        if value is False or value == 0:
            return None
        return {"questions": value} if isinstance(value, int) else value

    @model_serializer(mode="wrap")
    def _without_unset(self, handler: Any) -> dict[str, Any]:
        return without_unset(handler(self), "mt_bench", "engine")

    @model_validator(mode="after")
    def _consistent(self) -> RoundsSpec:
        if self.strategy == "policy_vs_ensemble" and not self.ensemble:
            raise ValueError("strategy policy_vs_ensemble pairs the policy's answer with the ensemble's: "
                             "set ensemble: true (the recipe's generators answer beside the policy)")
        if self.prompts == "new" and self.per_round is not None:
            raise ValueError("per_round: with prompts: new each round takes the prompts new since the last "
                             "refresh, however many; drop per_round")
        if self.strategy == "best_vs_worst_samples" and self.samples < 2:
            raise ValueError("strategy best_vs_worst_samples pairs the best and worst of the policy's answers: "
                             "samples must be at least 2")
        return self

    @property
    def scheduled(self) -> bool:
        """A series of rounds that scheduled refreshes advance, one round per batch of new prompts."""
        return self.on and self.prompts == "new"

    @property
    def on(self) -> bool:
        """More than one round: the run is a series of rounds."""
        return self.count > 1

    def member_names(self) -> list[str]:
        """The policy's members in a round: one per sample, each with its own seed."""
        return [f"{POLICY}-{i}" for i in range(1, self.samples + 1)]


def rounds_problems(recipe: Any) -> list[str]:
    """What a recipe with rounds lacks, one line each (empty: fine, or no rounds)."""
    r = recipe.rounds
    if not r.on:
        policy = [j.name for j in recipe.judges if j.model == POLICY]
        if policy:
            return [f"judge {policy[0]!r}: model {POLICY!r} judges each round with its policy; it needs rounds: "
                    f"(a count above 1)"]
        return ["rounds.mt_bench measures each round; it needs rounds.count above 1 (a plain run's models: "
                "rlaif evaluate RUN --mt-bench)"] if r.mt_bench is not None else []
    found = []
    if not recipe.generators:
        found.append("rounds: a series of rounds makes data each round; give generators and judges")
    dpo = recipe.train.dpo
    if dpo is None:
        found.append("rounds: each round trains dDPO from the last round's model; give a train.dpo block")
    elif dpo.variants:
        found.append("rounds: train.dpo.variants (a sweep) cannot start a series of rounds; train one dDPO model")
    elif dpo.lora is not None and r.reference == "sft":
        found.append("rounds.reference: sft needs a reference other than the start model, which LoRA's "
                     "(adapters off) cannot be; use reference: previous, or train without lora")
    # (a round's own recipe has the policy's members among its generators, and names them in binarize.policy)
    clash = sorted({g.name for g in recipe.generators} & set(r.member_names())) \
        if r.ensemble and not recipe.binarize.policy else []
    if clash:
        found.append(f"rounds: generator {clash[0]!r} has a name the policy's answers take in a round; rename it")
    fixed = [j.name for j in recipe.judges if j.model != POLICY]
    if r.judge is not None and r.judge not in [j.name for j in recipe.judges]:
        found.append(f"rounds.judge {r.judge!r} is not one of the judges {[j.name for j in recipe.judges]}")
    elif r.judge is not None and r.judge not in fixed:
        found.append(f"rounds.judge {r.judge!r} judges with the policy; the measurements need a fixed judge")
    elif recipe.judges and not fixed:
        found.append("rounds: every judge is `model: policy`; add a fixed judge for the per-round measurements")
    found += mt_bench_problems(recipe, fixed)
    if any(j.model == POLICY for j in recipe.judges) and student(recipe) is None:
        found.append("rounds: a `model: policy` judge judges round 1 with the student; give train.sft.model "
                     "or train.dpo.model")
    return found


def mt_bench_problems(recipe: Any, fixed: list[str]) -> list[str]:
    """What `rounds.mt_bench` needs: a fixed judge that writes text (MT-Bench's grader)."""
    m = recipe.rounds.mt_bench
    if m is None or not fixed:
        return []
    name = m.judge or recipe.rounds.judge or fixed[0]
    if name not in [j.name for j in recipe.judges]:
        return [f"rounds.mt_bench.judge {name!r} is not one of the judges {[j.name for j in recipe.judges]}"]
    if name not in fixed:
        return [f"rounds.mt_bench.judge {name!r} judges with the policy; MT-Bench needs a fixed judge"]
    spec = recipe.judge_spec(name)
    if not spec.impl.text:
        return [f"rounds.mt_bench: judge {name!r} is a {spec.kind}; MT-Bench needs a judge that writes text "
                f"(name one with rounds.mt_bench.judge)"]
    return []


def mt_bench_judge(recipe: Any) -> Any:
    """The judge that grades the rounds' MT-Bench: rounds.mt_bench.judge, else the measurements' judge."""
    m = recipe.rounds.mt_bench
    return recipe.judge_spec(m.judge) if m is not None and m.judge else measuring_judge(recipe)


def student(recipe: Any) -> str | None:
    """The model round 1 trains (the policy before any round): dSFT's start, else dDPO's."""
    for spec in (recipe.train.sft, recipe.train.dpo):
        if spec is not None and spec.model:
            return spec.model
    return None


def measuring_judge(recipe: Any) -> Any:
    """The judge of the per-round measurements: rounds.judge, else the first fixed judge."""
    name = recipe.rounds.judge or next(j.name for j in recipe.judges if j.model != POLICY)
    return recipe.judge_spec(name)
