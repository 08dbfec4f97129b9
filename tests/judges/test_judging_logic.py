"""Parsing and binarization on records (the engine-backed tests are in tests/generation/test_engine.py)."""

import math

import pytest

from rlaif.core.records import AspectRating, Completion, Judgement, Message, Prompt
from rlaif.preferences.binarize import BinarizeSpec, binarize
from rlaif.preferences.binarize import test_ids as held_out_ids
from rlaif.judges.kinds.critique import CRITIQUE
from rlaif.judges.kinds.ultrafeedback import RATING
from rlaif.judges.parsing import bracket_format, expected_value, parse_output, rating_format, token_distribution


def split_pairs(pairs, test_fraction: float, seed: int):
    """The split a version makes (by `binarize.test_ids`): all pairs of a prompt land on the same side."""
    test = held_out_ids([x.prompt_id for x in pairs], test_fraction, seed)
    return [x for x in pairs if x.prompt_id not in test], [x for x in pairs if x.prompt_id in test]



def rating_distribution(tokens):
    return token_distribution(tokens, RATING.key, RATING.values)


def lp(p):
    return math.log(p)


def test_expected_score_from_the_rating_tokens_logprobs():
    tokens = [('{"', [('{"', 0.0)]), ("rating", [("rating", 0.0)]), ('":', [('":', 0.0)]),
              ("1", [("1", lp(0.4)), ("4", lp(0.2)), (" 4", lp(0.1)), ("x", lp(0.2)), ("5", lp(0.1))]),
              (',"', [(',"', 0.0)])]
    probs = rating_distribution(tokens)
    # non-rating candidates are dropped and the rest renormalized; " 4" and "4" are the same rating
    assert probs == pytest.approx({"1": 0.5, "2": 0.0, "3": 0.0, "4": 0.375, "5": 0.125})
    assert expected_value(probs) == pytest.approx(0.5 + 4 * 0.375 + 5 * 0.125)
    r = parse_output(RATING, '{"rating":1,"rationale":"Too short."}', tokens)
    assert (r.value, r.text) == ("1", "Too short.") and expected_value(r.probs) == pytest.approx(2.625)


def test_digits_elsewhere_are_not_mistaken_for_the_rating():
    tokens = [("1", [("1", 0.0)]), (' {"rating": ', [(' {"rating": ', 0.0)]), ("3", [("3", lp(0.5)), ("2", lp(0.5))])]
    assert rating_distribution(tokens) == pytest.approx({"1": 0, "2": 0.5, "3": 0.5, "4": 0, "5": 0})


@pytest.mark.parametrize("text, rating", [
    ('{"rating": 4, "rationale": "ok"}', "4"),
    ('{"rating":2,"rationale":"cut off mid-sen', "2"),  # truncated JSON: the rating is still there
    ("Rating: 5\nRationale: fine", "5"),  # endpoints without structured output
    ('{"rating": 10, "rationale": "out of range"}', None),
    ("I think this answer is quite good overall.", None),  # prose: unparsed, never made up
    ('{"rating": 9, "rationale": "out of range"}', None),
    ("", None),
])
def test_parse_rating_never_invents_a_score(text, rating):
    r = parse_output(RATING, text)
    assert r.value == rating and r.raw == text
    if rating is None:
        assert r.probs is None


def test_ten_written_as_two_tokens_takes_its_share_of_the_first_digit():
    # "[[" then "1" (P .6; "9" P .4), then "0" with P .5 after it: P(10) = .3, P(1) = .3, P(9) = .4
    fmt = bracket_format(tuple(str(i) for i in range(1, 11)), 100)
    tokens = [("Fine. [[", [("Fine. [[", 0.0)]), ("1", [("1", lp(0.6)), ("9", lp(0.4))]),
              ("0", [("0", lp(0.5)), ("]]", lp(0.5))]), ("]]", [("]]", 0.0)])]
    r = parse_output(fmt, "Fine. [[10]]", tokens)
    assert r.value == "10" and r.text == "Fine."
    assert r.probs["10"] == pytest.approx(0.3) and r.probs["1"] == pytest.approx(0.3) and r.probs["9"] == pytest.approx(0.4)
    assert expected_value(r.probs) == pytest.approx(3.0 + 0.3 + 3.6)


@pytest.mark.parametrize("text, value", [
    ("The answer is thorough. Rating: [[8]]", "8"),
    ("Rating: [[11]]", None),  # out of range
    ("Rating: [[", None),  # cut off
    ("I would give it an eight.", None),
])
def test_mt_bench_brackets(text, value):
    assert parse_output(bracket_format(tuple(str(i) for i in range(1, 11)), 100), text).value == value


@pytest.mark.parametrize("text, value", [  # FastChat's reading (llm_judge/common.py, run_judge_single)
    ("Good, though terse. Rating: [[7.5]]", "7.5"),
    ("Rating: [[8]]", "8"),
    ("Mostly right. Rating: [7]", "7"),  # its single-bracket fallback
    ("[7]", "7"),
    ("Cites [2] of the list. Rating: [[6]]", "6"),  # [[x]] anywhere comes before a first [x]
    ("Rating: [[10]]", "10"),
    ("Rating: [[0]]", None),  # off MT-Bench's scale: unparsed (FastChat would keep it)
    ("The answer is helpful and accurate.", None),  # no rating: unparsed, never made up
    ('{"explanation": "it cites [2]", "verdict": "', None),  # cut JSON: no [x] taken from its explanation
])
def test_mt_bench_ratings_are_read_as_fastchat_reads_them(text, value):
    r = parse_output(rating_format(1, 10, 100), text)
    assert r.value == value and r.raw == text
    if value == "7.5":  # the rating-token probabilities are over the whole ratings: none for 7.5
        assert r.probs is None and r.text == "Good, though terse. Rating:"


def test_critique_json_and_its_fallback():
    assert parse_output(CRITIQUE, '{"critique":"Too vague.","score":10}').value == "10"
    assert parse_output(CRITIQUE, '{"critique":"Too vague.","score":7').value == "7"  # truncated
    assert parse_output(CRITIQUE, '{"critique":"x","score":0}').value is None


def make(prompt_id, model, score, status="parsed"):
    c = Completion(completion_id=f"{prompt_id}-{model}", prompt_id=prompt_id, prompt_hash="h", model=model,
                   settings_hash="s", text=f"answer by {model}")
    aspects = {"helpfulness": AspectRating(rating=None if score is None else 1, expected=score)}
    j = Judgement(judgement_id=f"j-{c.completion_id}", completion_id=c.completion_id, prompt_id=prompt_id,
                  model=model, judge="j", judge_model="m", template="t", template_version="v1", template_hash="x",
                  settings_hash="s", sampling={}, aspects=aspects, status=status)
    return c, j


def test_binarize_counts_every_prompt_left_out():
    prompts = [Prompt(prompt_id=i, messages=[Message(role="user", content=f"q {i}")]) for i in "abcde"]
    rows = [
        make("a", "m1", 4.0), make("a", "m2", 2.0), make("a", "m3", 3.0),  # a pair: 4.0 vs 2.0 or 3.0
        make("b", "m1", 3.0), make("b", "m2", 3.0),  # all tie
        make("c", "m1", 5.0), make("c", "m2", None, status="unparsed"),  # one usable left
        make("d", "m1", 2.0),  # a single completion
        make("e", "m1", 1.0), make("e", "m2", 1.5),
    ]
    completions, judgements = [c for c, _ in rows], [j for _, j in rows]
    pairs, report = binarize(prompts, completions, judgements, BinarizeSpec())
    assert [p.prompt_id for p in pairs] == ["a", "e"]
    assert report.skipped == {"all completions tie": 1, "fewer than 2 scored completions": 1, "one completion": 1}
    assert report.unusable_judgements == {"unparsed": 1}
    a = pairs[0]
    assert a.score_chosen == 4.0 and a.chosen_model == "m1" and a.score_rejected in (2.0, 3.0)
    assert a.prompt == prompts[0].messages and a.chosen[0].role == "assistant"
    again, _ = binarize(prompts, completions, judgements, BinarizeSpec())
    assert again == pairs  # the random rejected is seeded per prompt
    drawn = {binarize(prompts, completions, judgements, BinarizeSpec(seed=s))[0][0].rejected_model for s in range(20)}
    assert drawn == {"m2", "m3"}  # rejected is a random other, not always the worst


def test_split_keeps_prompts_on_one_side():
    prompts = [Prompt(prompt_id=f"p{i}", messages=[Message(role="user", content="q")]) for i in range(10)]
    rows = [make(p.prompt_id, m, s) for p in prompts for m, s in (("m1", 2.0), ("m2", 1.0))]
    pairs, _ = binarize(prompts, [c for c, _ in rows], [j for _, j in rows], BinarizeSpec())
    train, test = split_pairs(pairs, 0.2, seed=0)
    assert len(test) == 2 and len(train) == 8
    assert not {p.prompt_id for p in train} & {p.prompt_id for p in test}
    assert split_pairs(pairs, 0.2, seed=0) == (train, test)
