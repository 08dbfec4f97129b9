"""A judge's biases on hand-built records whose numbers are known exactly."""

from __future__ import annotations

import math

import pytest

from rlaif.core.records import AspectRating, Completion, Judgement, Message, PairJudgement, PairVerdict, PreferencePair
from rlaif.preferences.bias import (judge_bias, length_bias, length_figure, position_bias, self_preference, spread,
                               score_spread, spearman, write_length_plot)

JUDGED = dict(prompt_id="p", judge="j", kind="ultrafeedback", judge_model="judge-model", template="t",
              template_version="v1", template_hash="h", settings_hash="s", sampling={})


def completion(cid: str, model: str, text: str | None, error: str | None = None) -> Completion:
    return Completion(completion_id=cid, prompt_id="p", prompt_hash="ph", model=model, settings_hash="s",
                      text=text, error=error)


def judgement(c: Completion, ratings: dict[str, float], status: str = "parsed", **kw) -> Judgement:
    return Judgement(judgement_id=f"j-{c.completion_id}", completion_id=c.completion_id, model=c.model, status=status,
                     aspects={a: AspectRating(rating=r) for a, r in ratings.items()}, **{**JUDGED, **kw})


# words 1, 2, 3, 4; characters 10, 3, 5, 7; scores (mean of two aspects) 1, 2, 4, 3
COMPLETIONS = [completion("c1", "a", "aaaaaaaaaa"), completion("c2", "a", "a b"),
               completion("c3", "b", "a b c"), completion("c4", "b", "a b c d"),
               completion("c5", "b", None, error="HTTP 500")]
RATINGS = {"c1": (1, 1), "c2": (1, 3), "c3": (4, 4), "c4": (2, 4)}
JUDGEMENTS = [judgement(c, {"helpfulness": RATINGS[c.completion_id][0], "honesty": RATINGS[c.completion_id][1]})
              for c in COMPLETIONS[:4]]
JUDGEMENTS.append(judgement(COMPLETIONS[4], {}, status="failed"))
JUDGEMENTS.append(Judgement(**{**JUDGEMENTS[0].model_dump(), "judgement_id": "bad", "completion_id": "c9",
                               "status": "unparsed", "aspects": {}}))


def pair(chosen: str, rejected: str) -> PreferencePair:
    return PreferencePair(prompt_id="p", prompt=[Message(role="user", content="q")],
                          chosen=[Message(role="assistant", content=chosen)],
                          rejected=[Message(role="assistant", content=rejected)], score_chosen=2, score_rejected=1,
                          chosen_model="a", rejected_model="b", chosen_completion_id="x", rejected_completion_id="y",
                          judge="j", pair_hash="h")


def test_spearman_by_hand():
    # ranks (4,1,2,3) vs (1,2,4,3): sum d^2 = 14, rho = 1 - 6*14 / (4*15)
    assert spearman([10, 3, 5, 7], [1, 2, 4, 3]) == pytest.approx(1 - 84 / 60)
    assert spearman([1], [1]) is None and spearman([1, 1, 1], [1, 2, 3]) is None


def test_length_bias_over_scored_completions_and_pairs():
    pairs = [pair("a b c", "a"), pair("a", "a b c d e")]  # words +2, -4; chars +4, -8
    r = length_bias(JUDGEMENTS, COMPLETIONS, pairs)
    assert r.completions == 4  # the failed completion and the unparsed judgement are left out
    assert r.spearman_words == pytest.approx(0.8)  # ranks (1,2,3,4) vs (1,2,4,3): 1 - 6*2/60
    assert r.spearman_chars == pytest.approx(-0.4)
    assert r.spearman_words_per_model == {"a": pytest.approx(1.0), "b": pytest.approx(-1.0)}
    assert (r.pairs, r.chosen_minus_rejected_words, r.chosen_minus_rejected_chars, r.chosen_longer) == (2, -1, -2, 0.5)
    on_one_aspect = length_bias(JUDGEMENTS, COMPLETIONS, aspect="helpfulness")  # 1, 1, 4, 2 against words
    assert on_one_aspect.spearman_words == pytest.approx(spearman([1, 2, 3, 4], [1, 1, 4, 2]))
    empty = length_bias([], COMPLETIONS)
    assert empty.completions == 0 and empty.spearman_words is None and empty.chosen_longer is None


def verdicts(first: str, second: str, ab: str | None, ba: str | None) -> list[PairVerdict]:
    return [PairVerdict(first=first, second=second, winner=ab), PairVerdict(first=second, second=first, winner=ba)]


def pair_judgement(n: int, ab: str | None, ba: str | None, status: str = "parsed") -> PairJudgement:
    return PairJudgement(judgement_id=f"pj{n}", completion_a="c1", completion_b="c3", model_a="a", model_b="b",
                         orders=verdicts("c1", "c3", ab, ba), winner="tie", **{**JUDGED, "kind": "pairwise",
                                                                                 "status": status})


def test_position_bias():
    js = [pair_judgement(1, "first", "second"),  # c1 both times: consistent
          pair_judgement(2, "first", "first"),   # the first slot won both times: changed, position won
          pair_judgement(3, "first", "tie"),     # a win became a tie: changed, not position won
          pair_judgement(4, "tie", "tie"),       # consistent
          pair_judgement(5, "first", None, status="unparsed")]
    r = position_bias(js)
    assert r.pairs == 4 and r.order_changed == 0.5 and r.position_won == 0.25
    assert r.verdicts == 5 and r.first_position_wins == 0.8  # first, second, first, first, first
    assert r.ties == 3 / 8


def test_self_preference():
    r = self_preference(JUDGEMENTS, COMPLETIONS, {"a": "judge-model", "b": "someone-else"})
    assert r.own_members == ["a"] and (r.own_completions, r.other_completions) == (2, 2)
    assert (r.mean_own, r.mean_others, r.difference) == (1.5, 3.5, -2.0)
    none_own = self_preference(JUDGEMENTS, COMPLETIONS, {"a": "x", "b": "y"})
    assert none_own.own_members == [] and none_own.mean_own is None and none_own.difference is None


def test_score_spread_per_aspect_over_the_scale():
    s = score_spread(JUDGEMENTS)
    assert sorted(s) == ["helpfulness", "honesty", "mean"]
    h = s["helpfulness"]  # 1, 1, 4, 2 on 1..5
    assert (h.n, h.mean, h.counts) == (4, 2.0, [2, 1, 0, 1, 0]) and h.std == pytest.approx(math.sqrt(1.5))
    assert h.bin_edges == [0.5, 1.5, 2.5, 3.5, 4.5, 5.5]
    assert s["honesty"].counts == [1, 0, 1, 2, 0]  # 1, 3, 4, 4
    m = s["mean"]  # 1, 2, 4, 3
    assert (m.mean, m.counts) == (2.5, [1, 1, 1, 1, 0]) and m.std == pytest.approx(math.sqrt(1.25))
    # soft (expected) scores fall in the bin of their nearest step; a reward model's range is cut in ten
    assert spread([1.4, 2.6, 5.0], (1, 5)).counts == [1, 0, 1, 0, 1]
    reward = spread([0.0, 10.0, 4.5], None)
    assert reward.bin_edges == [float(i) for i in range(11)] and reward.counts == [1, 0, 0, 0, 1, 0, 0, 0, 0, 1]


def test_judge_bias_report_by_kind():
    r = judge_bias(JUDGEMENTS, COMPLETIONS, members={"a": "judge-model"})
    assert (r.judge, r.kind, r.judge_model) == ("j", "ultrafeedback", "judge-model")
    assert r.position is None and r.spread["mean"].mean == 2.5 and r.self_preference.difference == -2.0
    pw = judge_bias([pair_judgement(1, "first", "first")], COMPLETIONS)
    assert pw.spread == {} and pw.position.first_position_wins == 1.0 and pw.self_preference is None
    assert pw.length.completions == 2  # the pair's two completions, scored by their preference (0.5 each: a tie)
    with pytest.raises(ValueError, match="several judges"):
        judge_bias([*JUDGEMENTS[:1], judgement(COMPLETIONS[1], {"x": 1}, judge="other")], COMPLETIONS)
    assert r.model_dump_json()  # the card stores it as JSON


def test_length_plot(tmp_path):
    fig = length_figure(JUDGEMENTS, COMPLETIONS)
    ax = fig.axes[0]
    assert "Spearman rho = 0.80 (n=4)" in ax.get_title()
    points = {t.get_text().split(" ")[0]: c.get_offsets().tolist()
              for c, t in zip(ax.collections, ax.get_legend().get_texts())}
    assert points == {"a": [[1, 1], [2, 2]], "b": [[3, 4], [4, 3]]}
    assert "rho=-1.00" in ax.get_legend().get_texts()[1].get_text()
    path = write_length_plot(tmp_path / "plots" / "length.png", JUDGEMENTS, COMPLETIONS)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
