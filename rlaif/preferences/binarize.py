"""Binarization: judged completions into chosen/rejected pairs, every left-out prompt counted.

Scores come from `rlaif.judges.scores.completion_scores`, so one binarize serves every judge kind: the
mean of aspects (UltraFeedback, as Argilla's Notus did), one `aspect`, a critique's `overall`, a
reward model's `reward`, or a pairwise judge's mean preference against the prompt's others.

Strategies (the recipe's `binarize.strategy`):
    best_vs_random  chosen = a best-scored completion, rejected = one of the others drawn at random,
                    seeded per prompt (HuggingFaceH4/ultrafeedback_binarized's recipe)
    best_vs_worst   chosen = a best-scored completion, rejected = a worst-scored one
    all_pairs       every two completions of a prompt whose scores differ by at least min_margin
    best_vs_worst_samples   best_vs_worst among the policy's own answers only (`policy`: its members),
                    whatever else answered the prompt: on-policy pairs, as RLHFlow's iterative DPO
    policy_vs_ensemble      the policy's best answer against the ensemble's best (the other members');
                    the higher is chosen
The last two are an on-policy round's (flows/rounds.py), which sets `policy`.

Margins and ties, precisely:
    A pair is made only when score_chosen - score_rejected > 0 and >= `min_margin`: two equal scores
    never make a pair, whatever the policy. `ties` decides what happens when several completions
    share the best score (or, for best_vs_worst, the worst): `random` draws one of them (seeded per
    prompt), `skip` leaves the prompt out, counted as "tie for best" / "tie for worst".
    all_pairs has no "best", so `ties` does not change it.

Length control (`length_penalty`, score units per 100 words, default 0: off):
    Judges favour longer answers, so a pair whose chosen is longer must hold its margin after a
    penalty for the extra length, as length-controlled evaluations discount it (Dubois et al., 2024):
        adjusted = score_chosen - score_rejected - length_penalty * max(0, words_chosen - words_rejected) / 100
    and a pair is made only when adjusted > 0 and adjusted >= min_margin, besides the plain margin
    rule above. Words are whitespace-separated (comparable across the ensemble's tokenizers). A
    shorter chosen earns no bonus: the penalty only ever removes pairs. Where the strategy draws
    the rejected answer, it draws among those that pass; a prompt that has pairs under the plain
    margin but none after the penalty is counted as "no pair meets min_margin after the length penalty".
    With the default 0 the pairs are exactly those made without it (the same seeded draws).

Unlike distilabel's DPO formatter, a judgement that failed or did not parse never enters a pair.
Every prompt left out is counted under its reason (and its id kept, for the dataset's manifest);
every unusable judgement is counted under its status.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from itertools import combinations
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_serializer, model_validator

from rlaif.core.records import (Completion, Judgement, Message, PairJudgement, PreferencePair, Prompt,
                                ScoreSource, content_hash, without_unset)
from rlaif.judges.scores import completion_scores

Strategy = Literal["best_vs_random", "best_vs_worst", "all_pairs", "best_vs_worst_samples", "policy_vs_ensemble"]
ON_POLICY = ("best_vs_worst_samples", "policy_vs_ensemble")  # strategies that need `policy`

# why a prompt makes no pair, in the order the checks run
NO_COMPLETIONS = "no completions"
ONE_COMPLETION = "one completion"
FEW_SCORED = "fewer than 2 scored completions"
ALL_TIE = "all completions tie"
TIE_BEST = "tie for best"
TIE_WORST = "tie for worst"
BELOW_MARGIN = "no pair meets min_margin"
NO_POLICY = "no scored answer from the policy"
NO_ENSEMBLE = "no scored answer from the ensemble"
LENGTH_PENALIZED = "no pair meets min_margin after the length penalty"


class BinarizeSpec(BaseModel):
    """The recipe's `binarize:` block."""

    model_config = ConfigDict(extra="forbid")

    judge: str | None = None  # which of the recipe's judges; None: the first
    score: ScoreSource = "auto"  # expected: from the judge's probabilities; auto: those where given
    aspect: str | None = None  # score on one aspect (e.g. helpfulness) instead of the mean of all
    strategy: Strategy = "best_vs_random"
    min_margin: float = Field(0.0, ge=0)  # smallest score gap a pair may have (a gap of 0 never pairs)
    ties: Literal["random", "skip"] = "random"  # several completions share the best (or worst) score
    length_penalty: float = Field(0.0, ge=0)  # score units per 100 words the chosen is longer (see the module doc)
    test_fraction: float = Field(0.2, ge=0, lt=1)
    seed: int = 0
    push_to_hub: str | None = None  # a Hub repo id: each new version is pushed there (token: HF_TOKEN)
    policy: list[str] | None = None  # the on-policy strategies: the policy's member names (a round sets them)

    @model_serializer(mode="wrap")
    def _without_unset_policy(self, handler: Any) -> dict[str, Any]:
        """No `policy` key outside a round: a block dumps (and hashes) as it did before rounds existed."""
        return without_unset(handler(self), "policy")

    @model_validator(mode="after")
    def _policy_named(self) -> BinarizeSpec:
        if self.strategy in ON_POLICY and not self.policy:
            raise ValueError(f"binarize.strategy {self.strategy!r} pairs the policy's answers, which only a round "
                             f"after the first has: set it as rounds.strategy (recipe/rounds.py)")
        return self


class BinarizeReport(BaseModel):
    prompts: int = 0
    pairs: int = 0
    prompts_paired: int = 0
    judgements: int = 0
    scored_completions: int = 0
    skipped: dict[str, int] = Field(default_factory=dict)  # reason -> prompts left out
    skipped_ids: dict[str, list[str]] = Field(default_factory=dict)  # reason -> those prompts' ids
    unusable_judgements: dict[str, int] = Field(default_factory=dict)  # status -> count
    judgements_for_other_prompts: int = 0  # prompts not in this set (e.g. removed as duplicates)

    def add(self, other: BinarizeReport) -> None:
        """Fold in the report of another chunk of prompts."""
        for f in ("prompts", "pairs", "prompts_paired", "judgements", "scored_completions",
                  "judgements_for_other_prompts"):
            setattr(self, f, getattr(self, f) + getattr(other, f))
        for k, v in other.skipped.items():
            self.skipped[k] = self.skipped.get(k, 0) + v
        for k, ids in other.skipped_ids.items():
            self.skipped_ids.setdefault(k, []).extend(ids)
        for k, v in other.unusable_judgements.items():
            self.unusable_judgements[k] = self.unusable_judgements.get(k, 0) + v


def _unusable(judgements: list, scores: dict[str, float], spec: BinarizeSpec,
              ok: dict[str, Completion]) -> Counter[str]:
    bad: Counter[str] = Counter()
    for j in judgements:
        if j.status != "parsed":
            bad[j.status] += 1
        elif isinstance(j, PairJudgement):
            if not (j.completion_a in ok and j.completion_b in ok):
                bad["completion missing or failed"] += 1
            elif spec.score == "expected" and j.p_a is None:
                bad["no expected score"] += 1
        elif j.completion_id not in ok:
            bad["completion missing or failed"] += 1
        elif j.completion_id not in scores:
            bad[f"no {spec.aspect} rating" if spec.aspect else f"no {spec.score} score"] += 1
    return bad


def select_judgements(judgements: list, spec: BinarizeSpec) -> list:
    """The judgements of the judge `spec` names (or the only one), checked to be usable together."""
    if spec.judge is not None:
        judgements = [j for j in judgements if j.judge == spec.judge]
    names = sorted({j.judge for j in judgements})
    if len(names) > 1:
        raise ValueError(f"judgements from several judges {names}: set binarize.judge to one of them")
    if judgements and len({type(j) for j in judgements}) > 1:
        raise ValueError(f"judge {names[0]!r} has both pointwise and pairwise judgements")
    if spec.aspect and judgements:
        if isinstance(judgements[0], PairJudgement):
            raise ValueError(f"binarize.aspect={spec.aspect!r}, but judge {names[0]!r} is pairwise (no aspects)")
        have = sorted({a for j in judgements if j.status == "parsed" for a in j.aspects})
        if have and spec.aspect not in have:
            raise ValueError(f"binarize.aspect={spec.aspect!r}: judge {names[0]!r} rates {have}")
    return judgements


def binarize(prompts: list[Prompt], completions: list[Completion],
             judgements: list[Judgement] | list[PairJudgement],
             spec: BinarizeSpec) -> tuple[list[PreferencePair], BinarizeReport]:
    """Pairs for the prompts given, and a report that accounts for every prompt and judgement."""
    judgements = select_judgements(list(judgements), spec)
    wanted = {p.prompt_id for p in prompts}
    report = BinarizeReport(prompts=len(prompts), judgements=len(judgements))
    report.judgements_for_other_prompts = sum(j.prompt_id not in wanted for j in judgements)
    judgements = [j for j in judgements if j.prompt_id in wanted]

    ok = {c.completion_id: c for c in completions if c.ok and c.prompt_id in wanted}
    scores = {cid: s for cid, s in completion_scores(judgements, spec.score, spec.aspect).items() if cid in ok}
    report.scored_completions = len(scores)
    report.unusable_judgements = dict(_unusable(judgements, scores, spec, ok))
    meta = next((j for j in judgements if j.status == "parsed"), None)
    provenance = dict(judge=meta.judge, judge_model=meta.judge_model, judge_kind=meta.kind,
                      template_version=meta.template_version) if meta else {}

    per_prompt: dict[str, list[Completion]] = defaultdict(list)
    for c in ok.values():
        per_prompt[c.prompt_id].append(c)

    pairs: list[PreferencePair] = []
    skipped: dict[str, list[str]] = defaultdict(list)
    for p in prompts:
        made, reason = _pairs_for_prompt(p, per_prompt[p.prompt_id], scores, spec)
        if reason:
            skipped[reason].append(p.prompt_id)
            continue
        for (sc, chosen), (sr, rejected) in made:
            pairs.append(PreferencePair(
                prompt_id=p.prompt_id, prompt=list(p.messages),
                chosen=[Message(role="assistant", content=chosen.text)],
                rejected=[Message(role="assistant", content=rejected.text)],
                score_chosen=sc, score_rejected=sr, chosen_model=chosen.model, rejected_model=rejected.model,
                chosen_completion_id=chosen.completion_id, rejected_completion_id=rejected.completion_id,
                pair_hash=content_hash(chosen.completion_id, rejected.completion_id, sc, sr), **provenance))
    report.pairs = len(pairs)
    report.prompts_paired = len({x.prompt_id for x in pairs})
    report.skipped = {k: len(v) for k, v in skipped.items()}
    report.skipped_ids = dict(skipped)
    return pairs, report


Scored = tuple[float, Completion]


def _pairs_for_prompt(p: Prompt, comps: list[Completion], scores: dict[str, float],
                      spec: BinarizeSpec) -> tuple[list[tuple[Scored, Scored]], str | None]:
    if spec.strategy == "policy_vs_ensemble":
        return _policy_vs_ensemble(p, comps, scores, spec)
    if spec.strategy == "best_vs_worst_samples":
        comps = [c for c in comps if c.model in (spec.policy or ())]
    if not comps:
        return [], NO_COMPLETIONS
    if len(comps) == 1:
        return [], ONE_COMPLETION
    # a stable order, so the seeded draws do not depend on the order records were read in
    cands = sorted(((scores[c.completion_id], c) for c in comps if c.completion_id in scores),
                   key=lambda x: (-x[0], x[1].completion_id))
    if len(cands) < 2:
        return [], FEW_SCORED
    best, worst = cands[0][0], cands[-1][0]
    if best == worst:
        return [], ALL_TIE

    def far_enough(hi: float, lo: float) -> bool:
        return hi - lo > 0 and hi - lo >= spec.min_margin

    def short_enough(hi: Scored, lo: Scored) -> bool:
        return spec.length_penalty == 0 or far_enough(length_adjusted_margin(hi, lo, spec.length_penalty), 0.0)

    if spec.strategy == "all_pairs":
        made = [(a, b) for a, b in combinations(cands, 2) if far_enough(a[0], b[0])]
        kept = [(a, b) for a, b in made if short_enough(a, b)]
        return (kept, None) if kept else ([], LENGTH_PENALIZED if made else BELOW_MARGIN)

    rng = random.Random(content_hash(spec.seed, p.prompt_id))
    top = [x for x in cands if x[0] == best]
    if len(top) > 1 and spec.ties == "skip":
        return [], TIE_BEST
    chosen = rng.choice(top)
    if spec.strategy in ("best_vs_worst", "best_vs_worst_samples"):
        bottom = [x for x in cands if x[0] == worst]
        if len(bottom) > 1 and spec.ties == "skip":
            return [], TIE_WORST
        rest = bottom if far_enough(best, worst) else []
    else:
        rest = [x for x in cands if far_enough(best, x[0])]
    if not rest:
        return [], BELOW_MARGIN
    kept = [x for x in rest if short_enough(chosen, x)]
    if not kept:
        return [], LENGTH_PENALIZED
    return [(chosen, rng.choice(kept))], None


def _policy_vs_ensemble(p: Prompt, comps: list[Completion], scores: dict[str, float],
                        spec: BinarizeSpec) -> tuple[list[tuple[Scored, Scored]], str | None]:
    """The policy's best scored answer against the ensemble's best; the higher one is chosen."""
    rng = random.Random(content_hash(spec.seed, p.prompt_id))
    best = []
    for side, reason in ((True, NO_POLICY), (False, NO_ENSEMBLE)):
        cands = sorted(((scores[c.completion_id], c) for c in comps
                        if c.completion_id in scores and (c.model in (spec.policy or ())) == side),
                       key=lambda x: (-x[0], x[1].completion_id))
        if not cands:
            return [], reason
        top = [x for x in cands if x[0] == cands[0][0]]
        if len(top) > 1 and spec.ties == "skip":
            return [], TIE_BEST
        best.append(rng.choice(top))
    hi, lo = sorted(best, key=lambda x: -x[0])
    if not (hi[0] - lo[0] > 0 and hi[0] - lo[0] >= spec.min_margin):
        return [], BELOW_MARGIN
    if spec.length_penalty and not length_adjusted_margin(hi, lo, spec.length_penalty) >= max(spec.min_margin, 1e-12):
        return [], LENGTH_PENALIZED
    return [(hi, lo)], None


def length_adjusted_margin(chosen: Scored, rejected: Scored, penalty: float) -> float:
    """score_chosen - score_rejected, less `penalty` per 100 words the chosen is longer (never a bonus)."""
    extra = len(chosen[1].text.split()) - len(rejected[1].text.split())
    return chosen[0] - rejected[0] - penalty * max(0, extra) / 100


def test_ids(prompt_ids: list[str], test_fraction: float, seed: int) -> set[str]:
    """The prompts held out for test: a seeded draw by prompt id, the same on every rerun."""
    ids = sorted(set(prompt_ids), key=lambda i: content_hash(seed, i))
    if len(ids) < 2 or test_fraction == 0:
        return set()
    return set(ids[:min(len(ids) - 1, max(1, round(len(ids) * test_fraction)))])
