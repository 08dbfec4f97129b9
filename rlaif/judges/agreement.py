"""How far two judges agree, and how far each agrees with human labels.

    agreement(records_a, records_b)  -> AgreementReport

- Spearman and Kendall correlation of the two judges' scores over the completions both scored
  (scipy); a pairwise judge's score of a completion is its mean preference against the prompt's
  others (`judges.scores`).
- chosen agreement: the share of prompts where both judges pick the same best completion (prompts
  where either judge's best is tied are left out and counted).
- Cohen's kappa (scikit-learn) on the binarized preference: for every pair of a prompt's completions,
  which one each judge prefers (a, b, or tie).
- flips: the share of those pairs whose preference differs between the two judges (a, b or tie),
  and the score shift, the mean of (b's score - a's score) over the completions both scored: with
  one judge at two times (its sentinel verdicts, judges/sentinels.py), how far it drifted.
- for pairwise judges: the share of pairs where swapping the order changed the verdict.
- the identities that answered each judge's requests (judges/identity.py).
- with human labels (JSONL rows: prompt_id, completion_a, completion_b, winner a|b|tie): each judge's
  share of labelled pairs where it prefers what the humans did.
- between two labelers (`labeler_agreement`): on the pairs both labelled, the share with the same
  winner and Cohen's kappa.

Label files are what `rlaif label` writes (`labels/<labeler>.jsonl`, judges/labeling.py) or any
hand-made JSONL with the four fields; the page's extra fields are optional, so both read.
"""

from __future__ import annotations

import json
from collections import defaultdict
from itertools import combinations
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from rlaif.core.errors import ConfigError, validation_message
from rlaif.core.records import Judgement, PairJudgement, ScoreSource
from rlaif.judges.identity import judged_by
from rlaif.judges.scores import completion_scores

Records = list[Judgement] | list[PairJudgement]


class HumanLabel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt_id: str
    completion_a: str
    completion_b: str
    winner: Literal["a", "b", "tie"]
    # written by `rlaif label`; optional so that a hand-made file of the four fields above still reads
    labeler: str | None = None
    shown_first: Literal["a", "b"] | None = None  # which completion the page showed on the left
    items: str | None = None  # how the pair was chosen: sample, disagree, sentinels
    time: str | None = None  # when it was labelled (UTC, ISO 8601)

    @property
    def pair(self) -> tuple[str, frozenset[str]]:
        """The labelled pair whichever way round it was written."""
        return self.prompt_id, frozenset((self.completion_a, self.completion_b))

    def winner_id(self) -> str | None:
        """The completion id that won, None for a tie."""
        return {"a": self.completion_a, "b": self.completion_b}.get(self.winner)


class LabelerAgreement(BaseModel):
    """Two labelers on the pairs both labelled."""

    labelers: tuple[str, str]
    pairs: int
    same_winner: float | None
    cohen_kappa: float | None


class AgreementReport(BaseModel):
    judges: tuple[str, str]
    completions_scored_by_both: int
    spearman: float | None
    kendall: float | None
    prompts_compared: int
    prompts_with_tied_best: int
    chosen_agreement: float | None
    preference_pairs: int
    cohen_kappa: float | None
    order_changed_verdict: dict[str, float | None]  # pairwise judges only
    flipped_pairs: int = 0  # preference pairs the two judges decide differently
    flip_rate: float | None = None
    score_shift: float | None = None  # mean of judges[1]'s score minus judges[0]'s
    served: dict[str, dict[str, int]] = {}  # per judge: verdicts per identity that answered
    human_pairs: dict[str, int] = {}
    human_agreement: dict[str, float | None] = {}


def _prompt_of(records: Records) -> dict[str, str]:
    out = {}
    for r in records:
        if isinstance(r, PairJudgement):
            out[r.completion_a] = out[r.completion_b] = r.prompt_id
        else:
            out[r.completion_id] = r.prompt_id
    return out


def _sign(x: float, y: float) -> str:
    return "a" if x > y else "b" if y > x else "tie"


def _preference(records: Records, scores: dict[str, float], a: str, b: str) -> str | None:
    """Which of a, b the judge prefers: its own pairwise verdict if it judged that pair, else scores."""
    for r in records:
        if isinstance(r, PairJudgement) and r.status == "parsed" and {r.completion_a, r.completion_b} == {a, b}:
            return r.winner if r.completion_a == a else {"a": "b", "b": "a", "tie": "tie"}[r.winner]
    if a in scores and b in scores:
        return _sign(scores[a], scores[b])
    return None


def _rate(hits: list[bool]) -> float | None:
    return sum(hits) / len(hits) if hits else None


def _finite(x: float) -> float | None:
    return None if x != x else float(x)  # NaN (a constant score list) -> None


def agreement(a: Records, b: Records, names: tuple[str, str], source: ScoreSource = "auto",
              human: list[HumanLabel] | None = None) -> AgreementReport:
    from scipy.stats import kendalltau, spearmanr
    from sklearn.metrics import cohen_kappa_score

    sa, sb = completion_scores(a, source), completion_scores(b, source)
    both = sorted(set(sa) & set(sb))
    rho = tau = None
    shift = sum(sb[c] - sa[c] for c in both) / len(both) if both else None
    if len(both) >= 3:
        rho = _finite(spearmanr([sa[c] for c in both], [sb[c] for c in both]).statistic)
        tau = _finite(kendalltau([sa[c] for c in both], [sb[c] for c in both]).statistic)

    prompt_of = {**_prompt_of(a), **_prompt_of(b)}
    by_prompt: dict[str, list[str]] = defaultdict(list)
    for c in dict.fromkeys(list(prompt_of)):  # in the records' order: pairs are (earlier, later)
        if c in sa and c in sb:
            by_prompt[prompt_of[c]].append(c)
    same, tied, labels_a, labels_b = [], 0, [], []
    for cs in by_prompt.values():
        if len(cs) < 2:
            continue
        best = []
        for s in (sa, sb):
            top = max(s[c] for c in cs)
            best.append([c for c in cs if s[c] == top])
        if len(best[0]) > 1 or len(best[1]) > 1:
            tied += 1
        else:
            same.append(best[0] == best[1])
        for x, y in combinations(cs, 2):
            labels_a.append(_preference(a, sa, x, y))
            labels_b.append(_preference(b, sb, x, y))
    flipped = sum(x != y for x, y in zip(labels_a, labels_b))
    kappa = None
    if labels_a and len(set(labels_a) | set(labels_b)) > 1:
        kappa = _finite(cohen_kappa_score(labels_a, labels_b))

    swaps = {}
    for name, recs in zip(names, (a, b)):
        parsed = [r for r in recs if isinstance(r, PairJudgement) and r.status == "parsed" and r.orders]
        if parsed:
            swaps[name] = _rate([r.order_changed_verdict for r in parsed])

    human_n, human_rate = {}, {}
    for name, recs, scores in ((names[0], a, sa), (names[1], b, sb)):
        if human:
            human_n[name], human_rate[name] = human_agreement(recs, scores, human)

    return AgreementReport(judges=names, completions_scored_by_both=len(both), spearman=rho, kendall=tau,
                           prompts_compared=len(same), prompts_with_tied_best=tied, chosen_agreement=_rate(same),
                           preference_pairs=len(labels_a), cohen_kappa=kappa, order_changed_verdict=swaps,
                           flipped_pairs=flipped, flip_rate=flipped / len(labels_a) if labels_a else None,
                           score_shift=shift, served={names[0]: judged_by(a), names[1]: judged_by(b)},
                           human_pairs=human_n, human_agreement=human_rate)


def human_agreement(records: Records, scores: dict[str, float], human: list[HumanLabel]) -> tuple[int, float | None]:
    """(labels the judge has a preference on, the share of them where it prefers what the human did)."""
    hits = []
    for h in human:
        pref = _preference(records, scores, h.completion_a, h.completion_b)
        if pref is not None:
            hits.append(pref == h.winner)
    return len(hits), _rate(hits)


def _canonical(h: HumanLabel) -> str:
    """The label as if the pair were written with its smaller completion id first: a, b or tie."""
    if h.winner == "tie":
        return "tie"
    return "a" if h.winner_id() == min(h.completion_a, h.completion_b) else "b"


def labeler_agreement(x: list[HumanLabel], y: list[HumanLabel], names: tuple[str, str]) -> LabelerAgreement:
    """Two labelers on the pairs both labelled (either way round): same winner, and Cohen's kappa."""
    from sklearn.metrics import cohen_kappa_score

    mine, theirs = {h.pair: _canonical(h) for h in x}, {h.pair: _canonical(h) for h in y}
    both = [p for p in mine if p in theirs]
    cx, cy = [mine[p] for p in both], [theirs[p] for p in both]
    kappa = _finite(cohen_kappa_score(cx, cy)) if len(set(cx) | set(cy)) > 1 else None
    return LabelerAgreement(labelers=names, pairs=len(both), same_winner=_rate([i == j for i, j in zip(cx, cy)]),
                            cohen_kappa=kappa)


def load_human_labels(path: str | Path) -> list[HumanLabel]:
    """Read a JSONL file of human preferences, or every `*.jsonl` in a folder (`<run>/labels/`, one file
    per labeler); a bad row is an error naming the file, line and field."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.jsonl"))
        if not files:
            raise ConfigError(f"{path}: no *.jsonl label files in this folder")
        return [h for f in files for h in load_human_labels(f)]
    if not path.is_file():
        raise ConfigError(f"{path}: human label file not found")
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(HumanLabel.model_validate(json.loads(line)))
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}, line {n}: not valid JSON ({e.msg} at column {e.colno})") from None
        except ValidationError as e:
            raise ConfigError(validation_message(f"{path}, line {n}", e).splitlines()[0]) from None
    return out
