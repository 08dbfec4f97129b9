"""A judge's known biases, measured from its own records, for the dataset card.

LLM judges favour longer answers, the answer shown first, and answers written by their own model
(Zheng et al., 2023; Dubois et al., 2024, length-controlled AlpacaEval). Each measure here is a
pure function over `rlaif.core.records`, so it can be computed on any run's judgements:

    length_bias(judgements, completions, pairs)   Spearman rho of score vs answer length, in characters
                                                  and in whitespace-separated words, over the scored
                                                  completions (and within each model); and over the
                                                  preference pairs, the mean chosen-minus-rejected
                                                  length and the share of pairs whose chosen is longer
    position_bias(pair_judgements)                over pairwise judgements with both orders parsed: the
                                                  share whose verdict changes when the order is swapped
                                                  (a win turning into a tie counts), the share where
                                                  each order picks a different answer (the position
                                                  won outright), and of single-order verdicts that pick
                                                  a side, the share that pick the one shown first
    self_preference(judgements, completions, members)
                                                  mean score of the completions written by the judge's
                                                  own model (a member whose model id equals the judge's
                                                  `judge_model`) against the mean of all the others
    score_spread(judgements)                      per aspect (and their mean): mean, population std
                                                  and counts per step of the kind's scale (bins one
                                                  unit wide centred on lo..hi; ten equal bins over the
                                                  range seen for an unbounded reward)
    judge_bias(...)                               all of them as one `BiasReport`
    write_length_plot(path, judgements, completions)
                                                  score vs words, one colour per model, rho in the title

A completion's score is what binarization uses (`rlaif.judges.scores.completion_scores`: the mean
of aspects, one `aspect`, or a pairwise judge's mean preference against the prompt's others), so a
bias shown here is a bias in the pairs. A measure with too little data (fewer than 2 points, or a
constant side) is None rather than a number that means nothing.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from rlaif.core.records import Completion, Judgement, PairJudgement, PreferencePair, ScoreSource
from rlaif.judges.scores import completion_scores


def words(text: str) -> int:
    """Whitespace-separated words: a length every tokenizer roughly agrees on."""
    return len(text.split())


def spearman(x: list[float], y: list[float]) -> float | None:
    """Spearman's rho (ties get average ranks), or None with fewer than 2 points or a constant side."""
    if len(x) < 2 or len(set(x)) < 2 or len(set(y)) < 2:
        return None
    from scipy.stats import spearmanr

    return float(spearmanr(x, y).statistic)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _share(flags: list[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


def _one_judge(judgements: list) -> None:
    names = sorted({(j.judge, j.judge_model) for j in judgements})
    if len(names) > 1:
        raise ValueError(f"judgements from several judges {names}: measure one judge at a time")


# ----------------------------------------------------------------------------- length
class LengthBias(BaseModel):
    completions: int  # scored completions
    spearman_chars: float | None
    spearman_words: float | None
    spearman_words_per_model: dict[str, float | None]  # within one model, where quality varies less
    pairs: int
    chosen_minus_rejected_chars: float | None  # mean over pairs
    chosen_minus_rejected_words: float | None
    chosen_longer: float | None  # share of pairs whose chosen has more words than its rejected


def scored_lengths(judgements: list, completions: Iterable[Completion], source: ScoreSource = "auto",
                   aspect: str | None = None) -> list[tuple[Completion, float]]:
    """(completion, score) for every usable completion the judge scored, in completion id order."""
    scores = completion_scores(judgements, source, aspect)
    return sorted(((c, scores[c.completion_id]) for c in completions if c.ok and c.completion_id in scores),
                  key=lambda x: x[0].completion_id)


def length_bias(judgements: list, completions: Iterable[Completion], pairs: Iterable[PreferencePair] = (),
                source: ScoreSource = "auto", aspect: str | None = None) -> LengthBias:
    _one_judge(judgements)
    scored = scored_lengths(judgements, completions, source, aspect)
    per_model: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for c, s in scored:
        per_model[c.model].append((words(c.text), s))
    pairs = list(pairs)
    dc = [len(p.chosen[0].content) - len(p.rejected[0].content) for p in pairs]
    dw = [words(p.chosen[0].content) - words(p.rejected[0].content) for p in pairs]
    return LengthBias(
        completions=len(scored),
        spearman_chars=spearman([len(c.text) for c, _ in scored], [s for _, s in scored]),
        spearman_words=spearman([words(c.text) for c, _ in scored], [s for _, s in scored]),
        spearman_words_per_model={m: spearman([w for w, _ in v], [s for _, s in v]) for m, v in sorted(per_model.items())},
        pairs=len(pairs), chosen_minus_rejected_chars=_mean(dc), chosen_minus_rejected_words=_mean(dw),
        chosen_longer=_share([d > 0 for d in dw]))


# ----------------------------------------------------------------------------- position
class PositionBias(BaseModel):
    pairs: int  # parsed pairwise judgements with a verdict in both orders
    order_changed: float | None  # share whose verdict (which answer, or a tie) differs between the orders
    position_won: float | None  # share where each order picked a different answer: the slot won, not the answer
    verdicts: int  # single-order verdicts that picked a side (ties left out)
    first_position_wins: float | None  # share of those that picked the answer shown first (0.5: no bias)
    ties: float | None  # share of all single-order verdicts that were ties


def position_bias(judgements: Iterable[PairJudgement]) -> PositionBias:
    judgements = [j for j in judgements if isinstance(j, PairJudgement)]
    _one_judge(judgements)
    changed, won, firsts, ties = [], [], [], []
    pairs = 0
    for j in judgements:
        if j.status != "parsed" or len(j.orders) != 2 or any(o.winner is None for o in j.orders):
            continue
        pairs += 1
        picked = [o.first if o.winner == "first" else o.second if o.winner == "second" else "tie" for o in j.orders]
        changed.append(picked[0] != picked[1])
        won.append("tie" not in picked and picked[0] != picked[1])
        for o in j.orders:
            ties.append(o.winner == "tie")
            if o.winner != "tie":
                firsts.append(o.winner == "first")
    return PositionBias(pairs=pairs, order_changed=_share(changed), position_won=_share(won), verdicts=len(firsts),
                        first_position_wins=_share(firsts), ties=_share(ties))


# ----------------------------------------------------------------------------- self-preference
class SelfPreference(BaseModel):
    judge_model: str
    own_members: list[str]  # ensemble members whose model is the judge's
    own_completions: int
    other_completions: int
    mean_own: float | None
    mean_others: float | None
    difference: float | None  # mean_own - mean_others; above 0: the judge favours its own model's answers


def self_preference(judgements: list, completions: Iterable[Completion], members: Mapping[str, str],
                    source: ScoreSource = "auto", aspect: str | None = None) -> SelfPreference:
    """`members` maps each ensemble member's name (a completion's `model`) to its model id; a
    completion whose member is not in it counts among the others."""
    _one_judge(judgements)
    judge_model = next((j.judge_model for j in judgements), "")
    own_members = sorted(m for m, model_id in members.items() if model_id == judge_model)
    own, others = [], []
    for c, s in scored_lengths(judgements, completions, source, aspect):
        (own if c.model in own_members else others).append(s)
    mean_own, mean_others = _mean(own), _mean(others)
    diff = mean_own - mean_others if mean_own is not None and mean_others is not None else None
    return SelfPreference(judge_model=judge_model, own_members=own_members, own_completions=len(own),
                          other_completions=len(others), mean_own=mean_own, mean_others=mean_others, difference=diff)


# ----------------------------------------------------------------------------- spread
class AspectSpread(BaseModel):
    n: int
    mean: float | None
    std: float | None  # population standard deviation
    bin_edges: list[float]
    counts: list[int]  # len(bin_edges) - 1 counts


def _edges(values: list[float], scale: tuple[float, float] | None) -> list[float]:
    if scale is not None:
        lo, hi = scale
        return [lo - 0.5 + i for i in range(int(round(hi - lo)) + 2)]
    if not values:
        return []
    lo, hi = min(values), max(values)
    if hi - lo < 1e-12:
        return [lo - 0.5, hi + 0.5]
    return [lo + (hi - lo) * i / 10 for i in range(11)]


def spread(values: list[float], scale: tuple[float, float] | None) -> AspectSpread:
    import numpy as np

    edges = _edges(values, scale)
    counts = np.histogram(values, bins=edges)[0].tolist() if len(edges) > 1 else []
    mean = _mean(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values)) if values else None
    return AspectSpread(n=len(values), mean=mean, std=std, bin_edges=edges, counts=counts)


def score_spread(judgements: Iterable[Judgement], source: ScoreSource = "auto") -> dict[str, AspectSpread]:
    """aspect -> spread of the parsed scores, plus `mean` (of aspects) when there are several."""
    judgements = [j for j in judgements if isinstance(j, Judgement) and j.status == "parsed"]
    _one_judge(judgements)
    if not judgements:
        return {}
    scale = judgements[0].scale
    aspects = sorted({a for j in judgements for a in j.aspects})
    out = {}
    for a in aspects + (["mean"] if len(aspects) > 1 else []):
        values = [s for j in judgements if (s := j.score(source, None if a == "mean" else a)) is not None]
        out[a] = spread(values, scale)
    return out


# ----------------------------------------------------------------------------- all together
class BiasReport(BaseModel):
    judge: str
    judge_model: str
    kind: str
    score: ScoreSource
    aspect: str | None
    length: LengthBias
    position: PositionBias | None  # pairwise kinds only
    self_preference: SelfPreference | None  # when the members' model ids are given
    spread: dict[str, AspectSpread]  # pointwise kinds only


def judge_bias(judgements: list, completions: list[Completion], pairs: Iterable[PreferencePair] = (),
               members: Mapping[str, str] | None = None, source: ScoreSource = "auto",
               aspect: str | None = None) -> BiasReport:
    """Every measure for one judge's judgements (see the module doc)."""
    _one_judge(judgements)
    first = judgements[0] if judgements else None
    pairwise = isinstance(first, PairJudgement)
    return BiasReport(
        judge=first.judge if first else "", judge_model=first.judge_model if first else "",
        kind=first.kind if first else "", score=source, aspect=aspect,
        length=length_bias(judgements, completions, pairs, source, aspect),
        position=position_bias(judgements) if pairwise else None,
        self_preference=self_preference(judgements, completions, members, source, aspect) if members is not None else None,
        spread={} if pairwise else score_spread(judgements, source))


# ----------------------------------------------------------------------------- the card's plot
def length_figure(judgements: list, completions: Iterable[Completion], source: ScoreSource = "auto",
                  aspect: str | None = None) -> Any:
    """Score vs words, one scatter per model (its rho in the legend), the overall rho in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scored = scored_lengths(judgements, completions, source, aspect)
    per_model: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for c, s in scored:
        per_model[c.model].append((words(c.text), s))
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    for model, points in sorted(per_model.items()):
        rho = spearman([w for w, _ in points], [s for _, s in points])
        label = f"{model} (n={len(points)}, rho={'n/a' if rho is None else f'{rho:.2f}'})"
        ax.scatter([w for w, _ in points], [s for _, s in points], s=12, alpha=0.7, label=label)
    rho = spearman([words(c.text) for c, _ in scored], [s for _, s in scored])
    ax.set(title=f"Score vs length: Spearman rho = {'n/a' if rho is None else f'{rho:.2f}'} (n={len(scored)})",
           xlabel="answer length (words)", ylabel=f"score ({aspect or 'mean of aspects'}, {source})")
    if per_model:
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    return fig


def write_length_plot(path: str | Path, judgements: list, completions: Iterable[Completion],
                      source: ScoreSource = "auto", aspect: str | None = None) -> Path:
    """The length plot as a PNG at `path` (Agg: files only)."""
    fig = length_figure(judgements, completions, source, aspect)  # selects Agg before pyplot loads
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
