"""Binarization: judged completions into chosen/rejected pairs, every left-out prompt counted.

The strategy is HuggingFaceH4/ultrafeedback_binarized's: chosen = the completion with the highest
score, rejected = one of the others drawn at random (seeded per prompt, so a rerun draws the same).
Unlike distilabel's DPO formatter, a judgement that failed or did not parse never enters a pair,
and a prompt whose scored completions all tie is skipped and counted, not passed through.
"""

from __future__ import annotations

import random
from collections import Counter

from pydantic import BaseModel, ConfigDict, Field

from generation.records import ScoreSource, Completion, Judgement, Message, PreferencePair, Prompt, content_hash


class BinarizeSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    judge: str | None = None  # which of the recipe's judges; None: the first
    score: ScoreSource = "auto"  # expected: from the judge's probabilities; auto: those where given
    test_fraction: float = Field(0.2, ge=0, lt=1)
    seed: int = 0


class BinarizeReport(BaseModel):
    prompts: int = 0
    pairs: int = 0
    skipped: dict[str, int] = Field(default_factory=dict)  # reason -> prompts left out
    unusable_judgements: dict[str, int] = Field(default_factory=dict)  # status -> count


def binarize(prompts: list[Prompt], completions: list[Completion], judgements: list[Judgement],
             spec: BinarizeSpec) -> tuple[list[PreferencePair], BinarizeReport]:
    by_completion = {c.completion_id: c for c in completions}
    report = BinarizeReport(prompts=len(prompts))
    skipped: Counter[str] = Counter()
    unusable: Counter[str] = Counter()
    scored: dict[str, list[tuple[float, Completion, Judgement]]] = {p.prompt_id: [] for p in prompts}
    for j in judgements:
        s = j.score(spec.score)
        c = by_completion.get(j.completion_id)
        if s is None or c is None or not c.ok:
            unusable[j.status if j.status != "parsed" else f"no {spec.score} score"] += 1
            continue
        if j.prompt_id in scored:
            scored[j.prompt_id].append((s, c, j))

    pairs = []
    for p in prompts:
        cands = scored[p.prompt_id]
        if len(cands) < 2:
            skipped["fewer than 2 scored completions"] += 1
            continue
        best = max(s for s, _, _ in cands)
        top = [x for x in cands if x[0] == best]
        rest = [x for x in cands if x[0] < best]
        if not rest:
            skipped["all completions tie"] += 1
            continue
        rng = random.Random(content_hash(spec.seed, p.prompt_id))
        (sc, chosen, jc), (sr, rejected, _) = rng.choice(top), rng.choice(rest)
        pairs.append(PreferencePair(
            prompt_id=p.prompt_id, prompt=list(p.messages),
            chosen=[Message(role="assistant", content=chosen.text)],
            rejected=[Message(role="assistant", content=rejected.text)],
            score_chosen=sc, score_rejected=sr, chosen_model=chosen.model, rejected_model=rejected.model,
            chosen_completion_id=chosen.completion_id, rejected_completion_id=rejected.completion_id,
            judge=jc.judge, pair_hash=content_hash(chosen.completion_id, rejected.completion_id, sc, sr),
        ))
    report.pairs = len(pairs)
    report.skipped = dict(skipped)
    report.unusable_judgements = dict(unusable)
    return pairs, report


def split_pairs(pairs: list[PreferencePair], test_fraction: float, seed: int
                ) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """A seeded split by prompt id: a prompt's pair lands on the same side on every rerun."""
    if not pairs or test_fraction == 0:
        return list(pairs), []
    order = sorted(pairs, key=lambda x: content_hash(seed, x.prompt_id))
    n_test = max(1, round(len(pairs) * test_fraction)) if len(pairs) > 1 else 0
    test_ids = {x.prompt_id for x in order[:n_test]}
    return [x for x in pairs if x.prompt_id not in test_ids], [x for x in pairs if x.prompt_id in test_ids]
