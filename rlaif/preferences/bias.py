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
                                                  own model (a member whose model id names the judge's
                                                  `judge_model`, see below) against the mean of the others
    score_spread(judgements)                      per aspect (and their mean): mean, population std
                                                  and counts per step of the kind's scale (bins one
                                                  unit wide centred on lo..hi; ten equal bins over the
                                                  range seen for an unbounded reward)
    judge_bias(...)                               all of them as one `BiasReport`
    write_length_plot(path, judgements, completions)
                                                  score vs words, one colour per model, rho in the title

    BiasData                                      what they all need, gathered one chunk at a time
                                                  (`add(judgements, completions, pairs)`): numbers only,
                                                  no record or text, so publishing a dataset of any size
                                                  measures its judge in memory bounded by a chunk;
                                                  `.report(members)`, `write_bias_plots(dir, data, members)`
    bias_rows(report)                             (measure, value) lines for the card and the command line
    run_judge_bias(store, judge, recipe_info)     the same for any judge that judged a run's completions,
                                                  binarized or not (`rlaif agreement`): each judge shard
                                                  covers one prompt chunk, so its prompts, completions and
                                                  records are read together, binarized with the recipe's
                                                  `binarize:` block and reduced to numbers before the next

Self-preference needs each member's model id (the recipe's generators); a member's model and the
judge's are the same model when their ids match, ignoring case and an `org/` prefix or a folder
(`Qwen/Qwen2.5-7B-Instruct` and `qwen2.5-7b-instruct` match).

A completion's score is what binarization uses (`rlaif.judges.scores.completion_scores`: the mean
of aspects, one `aspect`, or a pairwise judge's mean preference against the prompt's others), so a
bias shown here is a bias in the pairs. A measure with too little data (fewer than 2 points, or a
constant side) is None rather than a number that means nothing.
"""

from __future__ import annotations

import math
from array import array
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from rlaif.core.records import Completion, Judgement, PairJudgement, PreferencePair, Prompt, ScoreSource
from rlaif.core.store import RunStore
from rlaif.generation.ensemble import STAGE as COMPLETIONS
from rlaif.judges.registry import get_kind
from rlaif.judges.scores import completion_scores, score_of
from rlaif.judges.stage import stored_manifest
from rlaif.preferences.binarize import BinarizeSpec, binarize
from rlaif.prompts.prompt_sets import PROMPTS


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


# ----------------------------------------------------------------------------- what the measures report
class LengthBias(BaseModel):
    completions: int  # scored completions
    spearman_chars: float | None
    spearman_words: float | None
    spearman_words_per_model: dict[str, float | None]  # within one model, where quality varies less
    pairs: int
    chosen_minus_rejected_chars: float | None  # mean over pairs
    chosen_minus_rejected_words: float | None
    chosen_longer: float | None  # share of pairs whose chosen has more words than its rejected


class PositionBias(BaseModel):
    pairs: int  # parsed pairwise judgements with a verdict in both orders
    order_changed: float | None  # share whose verdict (which answer, or a tie) differs between the orders
    position_won: float | None  # share where each order picked a different answer: the slot won, not the answer
    verdicts: int  # single-order verdicts that picked a side (ties left out)
    first_position_wins: float | None  # share of those that picked the answer shown first (0.5: no bias)
    ties: float | None  # share of all single-order verdicts that were ties


class SelfPreference(BaseModel):
    judge_model: str
    own_members: list[str]  # ensemble members whose model is the judge's
    own_completions: int
    other_completions: int
    mean_own: float | None
    mean_others: float | None
    difference: float | None  # mean_own - mean_others; above 0: the judge favours its own model's answers


class AspectSpread(BaseModel):
    n: int
    mean: float | None
    std: float | None  # population standard deviation
    bin_edges: list[float]
    counts: list[int]  # len(bin_edges) - 1 counts


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


def scored_lengths(judgements: list, completions: Iterable[Completion], source: ScoreSource = "auto",
                   aspect: str | None = None) -> list[tuple[Completion, float]]:
    """(completion, score) for every usable completion the judge scored, in completion id order."""
    scores = completion_scores(judgements, source, aspect)
    return sorted(((c, scores[c.completion_id]) for c in completions if c.ok and c.completion_id in scores),
                  key=lambda x: x[0].completion_id)


def same_model(a: str, b: str) -> bool:
    """Two model ids name one model: equal but for case and an `org/` prefix (or a folder)."""
    def bare(m: str) -> str:
        return m.rstrip("/").rsplit("/", 1)[-1].lower()

    return bool(a) and bool(b) and bare(a) == bare(b)


def spread(values: list[float], scale: tuple[float, float] | None) -> AspectSpread:
    import numpy as np

    edges = _edges(values, scale)
    counts = np.histogram(values, bins=edges)[0].tolist() if len(edges) > 1 else []
    mean = _mean(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values)) if values else None
    return AspectSpread(n=len(values), mean=mean, std=std, bin_edges=edges, counts=counts)


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


# ----------------------------------------------------------------------------- the numbers, chunk by chunk
@dataclass
class BiasData:
    """Every number the measures need, added one chunk of records at a time (a prompt's completions
    and judgements together): per scored completion its member, length and score; per pair its
    length difference; per aspect the parsed scores; the pairwise verdicts as counts."""

    source: ScoreSource = "auto"
    aspect: str | None = None
    judge: str = ""
    judge_model: str = ""
    kind: str = ""
    pairwise: bool = False
    scale: tuple[float, float] | None = None
    members: list[str] = field(default_factory=list)  # index -> member name
    member: array = field(default_factory=lambda: array("I"))  # per scored completion
    chars: array = field(default_factory=lambda: array("q"))
    words: array = field(default_factory=lambda: array("q"))
    scores: array = field(default_factory=lambda: array("d"))
    pair_chars: array = field(default_factory=lambda: array("q"))  # chosen minus rejected, per pair
    pair_words: array = field(default_factory=lambda: array("q"))
    aspects: dict[str, array] = field(default_factory=dict)  # aspect -> parsed scores ("mean": of aspects)
    position: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("pairs", "changed", "won", "verdicts", "firsts", "orders", "ties"), 0))

    def add(self, judgements: Iterable, completions: Iterable[Completion] = (),
            pairs: Iterable[PreferencePair] = ()) -> BiasData:
        judgements = list(judgements)
        _one_judge(judgements + ([_Named(self.judge, self.judge_model)] if self.judge else []))
        if judgements and not self.judge:
            first = judgements[0]
            self.judge, self.judge_model, self.kind = first.judge, first.judge_model, first.kind
            self.pairwise = isinstance(first, PairJudgement)
        for c, s in scored_lengths(judgements, completions, self.source, self.aspect):
            if c.model not in self.members:
                self.members.append(c.model)
            self.member.append(self.members.index(c.model))
            self.chars.append(len(c.text))
            self.words.append(words(c.text))
            self.scores.append(s)
        for p in pairs:
            self.pair_chars.append(len(p.chosen[0].content) - len(p.rejected[0].content))
            self.pair_words.append(words(p.chosen[0].content) - words(p.rejected[0].content))
        for j in judgements:
            if isinstance(j, PairJudgement):
                self._add_verdicts(j)
            elif isinstance(j, Judgement) and j.status == "parsed":
                if self.scale is None:
                    self.scale = j.scale
                for a in [*j.aspects, "mean"]:
                    value = score_of(j, self.source, None if a == "mean" else a)
                    if value is not None:
                        self.aspects.setdefault(a, array("d")).append(value)
        return self

    def _add_verdicts(self, j: PairJudgement) -> None:
        if j.status != "parsed" or len(j.orders) != 2 or any(o.winner is None for o in j.orders):
            return
        n = self.position
        picked = [o.first if o.winner == "first" else o.second if o.winner == "second" else "tie" for o in j.orders]
        n["pairs"] += 1
        n["changed"] += picked[0] != picked[1]
        n["won"] += "tie" not in picked and picked[0] != picked[1]
        for o in j.orders:
            n["orders"] += 1
            n["ties"] += o.winner == "tie"
            if o.winner != "tie":
                n["verdicts"] += 1
                n["firsts"] += o.winner == "first"

    # ---- the measures
    def points(self) -> dict[str, list[tuple[int, float]]]:
        """member -> (words, score) of its scored completions."""
        out: dict[str, list[tuple[int, float]]] = defaultdict(list)
        for m, w, s in zip(self.member, self.words, self.scores):
            out[self.members[m]].append((w, s))
        return out

    def length(self) -> LengthBias:
        scores = list(self.scores)
        return LengthBias(
            completions=len(scores), spearman_chars=spearman(list(self.chars), scores),
            spearman_words=spearman(list(self.words), scores),
            spearman_words_per_model={m: spearman([w for w, _ in v], [s for _, s in v])
                                      for m, v in sorted(self.points().items())},
            pairs=len(self.pair_words), chosen_minus_rejected_chars=_mean(list(self.pair_chars)),
            chosen_minus_rejected_words=_mean(list(self.pair_words)),
            chosen_longer=_share([d > 0 for d in self.pair_words]))

    def position_bias(self) -> PositionBias:
        n = self.position
        rate = lambda k, of: n[k] / n[of] if n[of] else None  # noqa: E731
        return PositionBias(pairs=n["pairs"], order_changed=rate("changed", "pairs"), position_won=rate("won", "pairs"),
                            verdicts=n["verdicts"], first_position_wins=rate("firsts", "verdicts"),
                            ties=rate("ties", "orders"))

    def own_members(self, members: Mapping[str, str]) -> list[str]:
        return sorted(m for m, model_id in members.items() if same_model(model_id, self.judge_model))

    def self_preference(self, members: Mapping[str, str]) -> SelfPreference:
        """`members` maps each ensemble member's name (a completion's `model`) to its model id; a
        completion whose member is not in it counts among the others."""
        own_members = self.own_members(members)
        own = {i for i, m in enumerate(self.members) if m in own_members}
        mine = [s for m, s in zip(self.member, self.scores) if m in own]
        others = [s for m, s in zip(self.member, self.scores) if m not in own]
        mean_own, mean_others = _mean(mine), _mean(others)
        diff = mean_own - mean_others if mean_own is not None and mean_others is not None else None
        return SelfPreference(judge_model=self.judge_model, own_members=own_members, own_completions=len(mine),
                              other_completions=len(others), mean_own=mean_own, mean_others=mean_others,
                              difference=diff)

    def spread(self) -> dict[str, AspectSpread]:
        """aspect -> spread of the parsed scores, plus `mean` (of aspects) when there are several."""
        names = sorted(a for a in self.aspects if a != "mean")
        return {a: spread(list(self.aspects[a]), self.scale)
                for a in names + (["mean"] if len(names) > 1 and "mean" in self.aspects else [])}

    def report(self, members: Mapping[str, str] | None = None) -> BiasReport:
        return BiasReport(judge=self.judge, judge_model=self.judge_model, kind=self.kind, score=self.source,
                          aspect=self.aspect, length=self.length(),
                          position=self.position_bias() if self.pairwise else None,
                          self_preference=self.self_preference(members) if members is not None else None,
                          spread={} if self.pairwise else self.spread())


@dataclass(frozen=True)
class _Named:
    """The judge already measured, to check a later chunk's records against."""

    judge: str
    judge_model: str


# ----------------------------------------------------------------------------- on records
def length_bias(judgements: list, completions: Iterable[Completion], pairs: Iterable[PreferencePair] = (),
                source: ScoreSource = "auto", aspect: str | None = None) -> LengthBias:
    return BiasData(source, aspect).add(judgements, completions, pairs).length()


def position_bias(judgements: Iterable[PairJudgement]) -> PositionBias:
    return BiasData().add([j for j in judgements if isinstance(j, PairJudgement)]).position_bias()


def self_preference(judgements: list, completions: Iterable[Completion], members: Mapping[str, str],
                    source: ScoreSource = "auto", aspect: str | None = None) -> SelfPreference:
    return BiasData(source, aspect).add(judgements, completions).self_preference(members)


def score_spread(judgements: Iterable[Judgement], source: ScoreSource = "auto") -> dict[str, AspectSpread]:
    return BiasData(source).add([j for j in judgements if isinstance(j, Judgement) and j.status == "parsed"]).spread()


def judge_bias(judgements: list, completions: list[Completion], pairs: Iterable[PreferencePair] = (),
               members: Mapping[str, str] | None = None, source: ScoreSource = "auto",
               aspect: str | None = None) -> BiasReport:
    """Every measure for one judge's judgements (see the module doc)."""
    return BiasData(source, aspect).add(judgements, completions, pairs).report(members)


# ----------------------------------------------------------------------------- lines and plots
def _f(x: float | None, signed: bool = False) -> str:
    return "n/a" if x is None else f"{x:+.2f}" if signed else f"{x:.2f}"


def bias_rows(r: BiasReport) -> list[tuple[str, str]]:
    """The report as (measure, value) lines: what the card's table and `rlaif agreement` show."""
    n = r.length
    rows = [("length: Spearman rho, score vs words", f"{_f(n.spearman_words)} (n={n.completions})"),
            ("length: Spearman rho, score vs characters", _f(n.spearman_chars))]
    rows += [(f"length: rho within {m}", _f(v)) for m, v in n.spearman_words_per_model.items()]
    if n.pairs:
        rows += [("length: chosen minus rejected, words (mean)", f"{_f(n.chosen_minus_rejected_words, True)} "
                                                                 f"(n={n.pairs} pairs)"),
                 ("length: chosen minus rejected, characters (mean)", _f(n.chosen_minus_rejected_chars, True)),
                 ("length: pairs whose chosen is longer", _f(n.chosen_longer))]
    if r.position is not None:
        p = r.position
        rows += [("position: verdict changed when the order flipped", f"{_f(p.order_changed)} (n={p.pairs} pairs)"),
                 ("position: the slot won both orders", _f(p.position_won)),
                 ("position: first shown wins (0.5: none)", f"{_f(p.first_position_wins)} (n={p.verdicts})"),
                 ("position: ties", _f(p.ties))]
    if r.self_preference is not None:
        s = r.self_preference
        own = ", ".join(s.own_members) or f"none of the members is {s.judge_model}"
        rows += [("self-preference: members on the judge's model", own),
                 ("self-preference: mean score, own model's answers", f"{_f(s.mean_own)} (n={s.own_completions})"),
                 ("self-preference: mean score, the others'", f"{_f(s.mean_others)} (n={s.other_completions})"),
                 ("self-preference: own minus others", _f(s.difference, True))]
    rows += [(f"spread: {a}", f"mean {_f(x.mean)}, std {_f(x.std)} (n={x.n})") for a, x in r.spread.items()]
    return rows


def _length_axes(ax: Any, per_model: Mapping[str, list[tuple[int, float]]], ylabel: str) -> None:
    drawn = 0
    for model, points in sorted(per_model.items()):
        rho = spearman([w for w, _ in points], [s for _, s in points])
        label = f"{model} (n={len(points)}, rho={'n/a' if rho is None else f'{rho:.2f}'})"
        step = max(1, len(points) // 5000)  # rho over all; at most ~5000 dots a model
        ax.scatter([w for w, _ in points[::step]], [s for _, s in points[::step]], s=12, alpha=0.7, label=label)
        drawn += len(points)
    everyone = [p for v in per_model.values() for p in v]
    rho = spearman([w for w, _ in everyone], [s for _, s in everyone])
    ax.set(title=f"Score vs length: Spearman rho = {'n/a' if rho is None else f'{rho:.2f}'} (n={drawn})",
           xlabel="answer length (words)", ylabel=ylabel)
    if per_model:
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def length_figure(judgements: list, completions: Iterable[Completion], source: ScoreSource = "auto",
                  aspect: str | None = None) -> Any:
    """Score vs words, one scatter per model (its rho in the legend), the overall rho in the title."""
    return data_length_figure(BiasData(source, aspect).add(judgements, completions))


def data_length_figure(data: BiasData) -> Any:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    _length_axes(ax, data.points(), f"score ({data.aspect or 'mean of aspects'}, {data.source})")
    fig.tight_layout()
    return fig


def self_preference_figure(data: BiasData, members: Mapping[str, str]) -> Any:
    """Mean score per member; the members on the judge's own model in another colour."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    own = set(data.own_members(members))
    per_model = sorted(data.points().items())
    if per_model:
        means = [sum(s for _, s in v) / len(v) for _, v in per_model]
        bars = ax.bar([m for m, _ in per_model], means,
                      color=["tab:red" if m in own else "tab:blue" for m, _ in per_model])
        for b, (m, v), mean in zip(bars, per_model, means):
            ax.annotate(f"{mean:.2f} (n={len(v)})", (b.get_x() + b.get_width() / 2, b.get_height()),
                        ha="center", va="bottom", fontsize=8)
        s = data.self_preference(members)
        diff = "no member on the judge's model" if s.difference is None else f"own minus others {s.difference:+.2f}"
        ax.set_title(f"Mean score per member (red: the judge's model)\n{diff}", fontsize=10)
    else:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        ax.set(title="Mean score per member")
    ax.set(ylabel=f"mean score ({data.aspect or 'mean of aspects'}, {data.source})")
    fig.tight_layout()
    return fig


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    _pyplot().close(fig)
    return path


def write_length_plot(path: str | Path, judgements: list, completions: Iterable[Completion],
                      source: ScoreSource = "auto", aspect: str | None = None) -> Path:
    """The length plot as a PNG at `path` (Agg: files only)."""
    return _save(length_figure(judgements, completions, source, aspect), Path(path))


def write_bias_plots(out: Path, data: BiasData, members: Mapping[str, str] | None) -> dict[str, str]:
    """The card's bias plots under `out`; returns {title: path relative to out's parent}."""
    made = {"Judge's length bias: score vs length": _save(data_length_figure(data), out / "judge_length.png")}
    if members is not None:
        made["Judge's self-preference: mean score per member"] = _save(self_preference_figure(data, members),
                                                                      out / "judge_self_preference.png")
    return {title: f"{out.name}/{path.name}" for title, path in made.items()}


# ----------------------------------------------------------------------------- a run's judge
def members_of(recipe_info: dict | None) -> dict[str, str] | None:
    """Each ensemble member's name -> its model id, from the recipe (None when there is none)."""
    gens = (recipe_info or {}).get("generators")
    return {g["name"]: g["model"] for g in gens} if gens else None


def completion_shards(store: RunStore) -> dict[str, list[str]]:
    """prompt chunk -> the keys of its completion shards (from their metadata)."""
    out: dict[str, list[str]] = {}
    for key in store.keys(COMPLETIONS):
        info = store.info(COMPLETIONS, key, Completion)
        if info is not None:
            out.setdefault(info.group, []).append(key)
    return out


def run_judge_bias(store: RunStore, judge: str, recipe_info: dict | None = None) -> BiasReport:
    info, manifest = stored_manifest(store, judge)
    kind = get_kind(info["kind"]).record_type
    spec = BinarizeSpec(**{**(recipe_info or {}).get("binarize", {}), "judge": judge, "push_to_hub": None})
    data = BiasData(spec.score, spec.aspect)
    shards = completion_shards(store)
    for group, judged in manifest.by_group().items():
        prompts = store.read(PROMPTS, group, Prompt) if store.has(PROMPTS, group) else []
        completions = list({c.completion_id: c for key in shards.get(group, [])
                            for c in store.iter(COMPLETIONS, key, Completion)}.values())
        records = [r for s in judged for r in store.iter(manifest.stage, s.key, kind)]
        pairs, _ = binarize(prompts, completions, records, spec)
        data.add(records, completions, pairs)
    return data.report(members_of(recipe_info))
