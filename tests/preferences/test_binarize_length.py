"""Length-controlled binarization: a longer chosen must hold min_margin after the length penalty."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from rlaif.core.records import AspectRating, Completion, Judgement, Message, Prompt
from rlaif.preferences.binarize import BELOW_MARGIN, LENGTH_PENALIZED, BinarizeSpec, binarize, length_adjusted_margin


def prompt(pid: str) -> Prompt:
    return Prompt(prompt_id=pid, messages=[Message(role="user", content=f"question {pid}")])


def answer(pid: str, name: str, score: float, n_words: int) -> tuple[Completion, Judgement]:
    c = Completion(completion_id=f"{pid}-{name}", prompt_id=pid, prompt_hash="h", model=name, settings_hash="s",
                   text=" ".join(["word"] * n_words))
    j = Judgement(judgement_id=f"j-{c.completion_id}", prompt_id=pid, judge="judge", kind="critique", judge_model="m",
                  template="t", template_version="v1", template_hash="th", settings_hash="s", sampling={},
                  status="parsed", completion_id=c.completion_id, model=name, scale=(1, 10),
                  aspects={"overall": AspectRating(rating=score)})
    return c, j


def records(*answers: tuple[str, str, float, int]):
    made = [answer(*a) for a in answers]
    prompts = [prompt(pid) for pid in dict.fromkeys(a[0] for a in answers)]
    return prompts, [c for c, _ in made], [j for _, j in made]


# A is best but 200 words longer than B: A-B margin 1 - 2 (penalty 1 per 100 words) = -1; A-C: 3 - 2 = 1
LONG_BEST = records(("p", "A", 5, 250), ("p", "B", 4, 50), ("p", "C", 2, 50))


def rejected_models(spec: BinarizeSpec, recs=LONG_BEST) -> set[str]:
    pairs, _ = binarize(*recs, spec)
    return {p.rejected_model for p in pairs}


def test_best_vs_random_draws_only_among_rejected_that_survive_the_penalty():
    seen_plain = set().union(*(rejected_models(BinarizeSpec(seed=s)) for s in range(20)))
    assert seen_plain == {"B", "C"}
    seen_penalized = set().union(*(rejected_models(BinarizeSpec(seed=s, length_penalty=1.0, min_margin=0.5))
                                   for s in range(20)))
    assert seen_penalized == {"C"}


def test_default_penalty_changes_nothing():
    for seed in range(10):
        plain, _ = binarize(*LONG_BEST, BinarizeSpec(seed=seed))
        zero, _ = binarize(*LONG_BEST, BinarizeSpec(seed=seed, length_penalty=0.0))
        assert plain == zero


def test_best_vs_worst_left_out_under_its_own_reason():
    kept, _ = binarize(*LONG_BEST, BinarizeSpec(strategy="best_vs_worst", length_penalty=1.0))
    assert [(p.chosen_model, p.rejected_model) for p in kept] == [("A", "C")]  # 3 - 2 = 1 > 0
    pairs, report = binarize(*LONG_BEST, BinarizeSpec(strategy="best_vs_worst", length_penalty=1.5))
    assert pairs == [] and report.skipped == {LENGTH_PENALIZED: 1} and report.skipped_ids == {LENGTH_PENALIZED: ["p"]}


def test_all_pairs_keeps_the_pairs_that_hold_the_margin():
    plain, _ = binarize(*LONG_BEST, BinarizeSpec(strategy="all_pairs"))
    assert {(p.chosen_model, p.rejected_model) for p in plain} == {("A", "B"), ("A", "C"), ("B", "C")}
    pen, _ = binarize(*LONG_BEST, BinarizeSpec(strategy="all_pairs", length_penalty=1.0, min_margin=0.5))
    assert {(p.chosen_model, p.rejected_model) for p in pen} == {("A", "C"), ("B", "C")}  # B, C: same length


def test_margin_boundary_and_no_bonus_for_a_shorter_chosen():
    # margin 2, 100 words longer, penalty 1: adjusted exactly 1.0 = min_margin, so the pair stays
    edge = records(("e", "A", 3, 150), ("e", "B", 1, 50))
    assert len(binarize(*edge, BinarizeSpec(min_margin=1.0, length_penalty=1.0))[0]) == 1
    assert binarize(*edge, BinarizeSpec(min_margin=1.01, length_penalty=1.0))[1].skipped == {LENGTH_PENALIZED: 1}
    # a shorter chosen below the plain margin is not rescued by the 290 words it saves
    short = records(("s", "A", 3.0, 10), ("s", "B", 2.8, 300))
    pairs, report = binarize(*short, BinarizeSpec(min_margin=0.5, length_penalty=1.0))
    assert pairs == [] and report.skipped == {BELOW_MARGIN: 1}
    # the adjusted margin itself: a shorter chosen's stays its plain margin; a longer one's pays per 100 words
    (a, _), (b, _) = answer("s", "A", 3.0, 10), answer("s", "B", 2.8, 300)
    assert length_adjusted_margin((3.0, a), (2.8, b), 1.0) == pytest.approx(0.2)
    assert length_adjusted_margin((2.8, b), (3.0, a), 0.5) == pytest.approx(-0.2 - 1.45)
    # and a shorter chosen that holds the plain margin keeps it, whatever the penalty
    assert len(binarize(*short, BinarizeSpec(min_margin=0.1, length_penalty=100.0))[0]) == 1


def test_several_prompts_counted_each_under_its_reason():
    recs = records(("p1", "A", 5, 250), ("p1", "B", 4, 50), ("p2", "A", 5, 50), ("p2", "B", 4, 40),
                   ("p3", "A", 5, 10), ("p3", "B", 5, 10))
    pairs, report = binarize(*recs, BinarizeSpec(length_penalty=1.0))
    assert [p.prompt_id for p in pairs] == ["p2"]  # 1 - 0.1 = 0.9 > 0
    assert report.skipped == {LENGTH_PENALIZED: 1, "all completions tie": 1} and report.prompts_paired == 1


def test_negative_penalty_is_rejected():
    with pytest.raises(ValidationError, match="length_penalty"):
        BinarizeSpec(length_penalty=-1)
