"""Scores per completion from any judge kind, so binarization and agreement treat kinds alike.

Pointwise judges score each completion directly, by their kind's rule (`score_of`: by default the
mean over aspects, `Judgement.score`). A pairwise judge scores a
completion by how it fares against the prompt's others: the mean, over its comparisons, of
P(it is better) (soft, from the verdict tokens' probabilities), or of 1 / 0.5 / 0 for a win, a tie
(including the orders disagreeing) and a loss (sampled).
"""

from __future__ import annotations

from collections import defaultdict

from rlaif.core.records import Judgement, PairJudgement, ScoreSource
from rlaif.judges.registry import get_kind


def score_of(j: Judgement, source: ScoreSource = "auto", aspect: str | None = None) -> float | None:
    """A pointwise judgement's score as its kind reads it (None: unusable)."""
    return get_kind(j.kind).score(j, source, aspect)


def pairwise_scores(judgements: list[PairJudgement], source: ScoreSource = "auto") -> dict[str, float]:
    """completion id -> mean preference against the others it was compared with (parsed pairs only)."""
    sums: dict[str, list[float]] = defaultdict(list)
    for j in judgements:
        if j.status != "parsed":
            continue
        if source != "sampled" and j.p_a is not None:
            p_a = j.p_a
        elif source == "expected":
            continue
        else:
            p_a = {"a": 1.0, "b": 0.0, "tie": 0.5}[j.winner]
        sums[j.completion_a].append(p_a)
        sums[j.completion_b].append(1.0 - p_a)
    return {cid: sum(v) / len(v) for cid, v in sums.items()}


def completion_scores(judgements: list[Judgement] | list[PairJudgement], source: ScoreSource = "auto",
                      aspect: str | None = None) -> dict[str, float]:
    """completion id -> score, leaving out every judgement that is unparsed, failed or unscored."""
    if judgements and isinstance(judgements[0], PairJudgement):
        return pairwise_scores(judgements, source)  # type: ignore[arg-type]
    out = {}
    for j in judgements:
        s = score_of(j, source, aspect)  # type: ignore[arg-type]
        if s is not None:
            out[j.completion_id] = s
    return out
