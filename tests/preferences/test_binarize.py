"""Binarization strategies, margins, ties and every drop counted; prompt hygiene (dedup, eval overlap)."""

import pytest

from rlaif.prompts.hygiene import HygieneSpec, clean_prompts, eval_overlap, exact_duplicates, near_duplicates
from rlaif.core.records import (AspectRating, Completion, Judgement, Message, PairJudgement, PairVerdict, Prompt)
from rlaif.preferences.binarize import BinarizeSpec, binarize
from rlaif.preferences.binarize import test_ids as held_out_ids


def split_pairs(pairs, test_fraction: float, seed: int):
    """The split a version makes (by `binarize.test_ids`): all pairs of a prompt land on the same side."""
    test = held_out_ids([x.prompt_id for x in pairs], test_fraction, seed)
    return [x for x in pairs if x.prompt_id not in test], [x for x in pairs if x.prompt_id in test]



def prompt(pid: str, text: str | None = None) -> Prompt:
    return Prompt(prompt_id=pid, messages=[Message(role="user", content=text or f"question {pid}")])


def completion(pid: str, model: str, error: str | None = None) -> Completion:
    return Completion(completion_id=f"{pid}-{model}", prompt_id=pid, prompt_hash="h", model=model, settings_hash="s",
                      text=None if error else f"{model} on {pid}", error=error)


def pointwise(pid: str, model: str, aspects: dict[str, float | None], status: str = "parsed",
              kind: str = "ultrafeedback", judge: str = "uf") -> Judgement:
    return Judgement(judgement_id=f"{judge}-{pid}-{model}", completion_id=f"{pid}-{model}", prompt_id=pid,
                     model=model, judge=judge, kind=kind, judge_model="jm", template="t", template_version="v2",
                     template_hash="x", settings_hash="s", sampling={}, status=status,
                     aspects={a: AspectRating(rating=None if v is None else round(v), expected=v)
                              for a, v in aspects.items()})


def scored_set(table: dict[str, dict[str, float]]):
    """{prompt id: {model: score}} -> prompts, completions, judgements (one aspect)."""
    prompts = [prompt(p) for p in table]
    comps = [completion(p, m) for p, row in table.items() for m in row]
    judgements = [pointwise(p, m, {"helpfulness": s}) for p, row in table.items() for m, s in row.items()]
    return prompts, comps, judgements


def test_a_messy_judged_set_counts_every_drop():
    prompts = [prompt(p) for p in ("ok", "tie", "unparsed", "single", "failed_gen", "none", "tie_top", "close")]
    comps = [completion("ok", m) for m in "abc"] + [completion("tie", m) for m in "ab"]
    comps += [completion("unparsed", m) for m in "ab"] + [completion("single", "a")]
    comps += [completion("failed_gen", "a"), completion("failed_gen", "b", error="HTTP 500")]
    comps += [completion("tie_top", m) for m in "abc"] + [completion("close", m) for m in "ab"]
    J = pointwise
    judgements = [J("ok", "a", {"h": 4, "t": 5}), J("ok", "b", {"h": 2, "t": 2}), J("ok", "c", {"h": 3, "t": 3}),
                  J("tie", "a", {"h": 3, "t": 3}), J("tie", "b", {"h": 3, "t": 3}),
                  J("unparsed", "a", {"h": 4, "t": 4}), J("unparsed", "b", {"h": None, "t": None}, status="unparsed"),
                  J("single", "a", {"h": 5, "t": 5}),
                  J("failed_gen", "a", {"h": 4, "t": 4}), J("failed_gen", "b", {}, status="failed"),
                  J("tie_top", "a", {"h": 5, "t": 5}), J("tie_top", "b", {"h": 5, "t": 5}), J("tie_top", "c", {"h": 1, "t": 1}),
                  J("close", "a", {"h": 3, "t": 3.25}), J("close", "b", {"h": 3, "t": 3}),
                  J("elsewhere", "a", {"h": 1, "t": 1})]
    spec = BinarizeSpec(min_margin=0.5, ties="skip")
    pairs, report = binarize(prompts, comps, judgements, spec)
    assert [p.prompt_id for p in pairs] == ["ok"]
    ok = pairs[0]
    assert ok.score_chosen == 4.5 and ok.chosen_model == "a" and ok.rejected_model in "bc"  # Notus: mean of aspects
    assert (ok.judge, ok.judge_model, ok.judge_kind, ok.template_version) == ("uf", "jm", "ultrafeedback", "v2")
    assert report.skipped_ids == {"all completions tie": ["tie"], "fewer than 2 scored completions": ["unparsed"],
                                  "one completion": ["single", "failed_gen"], "no completions": ["none"],
                                  "tie for best": ["tie_top"], "no pair meets min_margin": ["close"]}
    assert sum(report.skipped.values()) + report.prompts_paired == len(prompts)
    assert report.unusable_judgements == {"unparsed": 1, "failed": 1}
    assert report.judgements_for_other_prompts == 1
    # with ties drawn at random and no margin, tie_top and close pair up too
    pairs, report = binarize(prompts, comps, judgements, BinarizeSpec())
    assert sorted(p.prompt_id for p in pairs) == ["close", "ok", "tie_top"]
    assert next(p for p in pairs if p.prompt_id == "tie_top").rejected_model == "c"


def test_strategies():
    prompts, comps, judgements = scored_set({"p": {"a": 5.0, "b": 4.0, "c": 2.0, "d": 1.0}})
    worst, _ = binarize(prompts, comps, judgements, BinarizeSpec(strategy="best_vs_worst"))
    assert [(x.chosen_model, x.rejected_model, x.score_chosen - x.score_rejected) for x in worst] == [("a", "d", 4.0)]
    drawn = {binarize(prompts, comps, judgements, BinarizeSpec(seed=s))[0][0].rejected_model for s in range(30)}
    assert drawn == {"b", "c", "d"}  # best vs a random other, seeded
    assert binarize(prompts, comps, judgements, BinarizeSpec(seed=3)) == binarize(prompts, comps[::-1], judgements[::-1],
                                                                                  BinarizeSpec(seed=3))
    margin, _ = binarize(prompts, comps, judgements, BinarizeSpec(seed=0, min_margin=2.5))
    assert all(x.rejected_model in "cd" for x in margin)
    every, report = binarize(prompts, comps, judgements, BinarizeSpec(strategy="all_pairs", min_margin=2))
    assert sorted((x.chosen_model, x.rejected_model) for x in every) == [("a", "c"), ("a", "d"), ("b", "c"), ("b", "d")]
    assert report.pairs == 4 and report.prompts_paired == 1


def test_ties_policy_for_worst_and_all_pairs():
    prompts, comps, judgements = scored_set({"p": {"a": 5.0, "b": 1.0, "c": 1.0}})
    _, report = binarize(prompts, comps, judgements, BinarizeSpec(strategy="best_vs_worst", ties="skip"))
    assert report.skipped == {"tie for worst": 1}
    pairs, _ = binarize(prompts, comps, judgements, BinarizeSpec(strategy="all_pairs", ties="skip"))
    assert len(pairs) == 2  # equal scores never pair; ties does not change all_pairs


def test_score_sources_aspect_and_judge_kinds():
    prompts = [prompt("p")]
    comps = [completion("p", m) for m in "ab"]
    uf = [pointwise("p", "a", {"helpfulness": 5, "honesty": 1}), pointwise("p", "b", {"helpfulness": 2, "honesty": 5})]
    assert binarize(prompts, comps, uf, BinarizeSpec())[0][0].chosen_model == "b"  # mean of aspects: 3.5 vs 3
    one, _ = binarize(prompts, comps, uf, BinarizeSpec(aspect="helpfulness"))
    assert (one[0].chosen_model, one[0].score_chosen) == ("a", 5)
    with pytest.raises(ValueError, match="rates"):
        binarize(prompts, comps, uf, BinarizeSpec(aspect="harmlessness"))
    critique = [pointwise("p", "a", {"overall": 7}, kind="critique", judge="cr"),
                pointwise("p", "b", {"overall": 9}, kind="critique", judge="cr")]
    with pytest.raises(ValueError, match="several judges"):
        binarize(prompts, comps, uf + critique, BinarizeSpec())
    pairs, _ = binarize(prompts, comps, uf + critique, BinarizeSpec(judge="cr"))
    assert (pairs[0].chosen_model, pairs[0].score_chosen, pairs[0].judge_kind) == ("b", 9, "critique")

    def verdict(winner, p_a, status="parsed"):
        return PairJudgement(judgement_id=f"pw-{winner}", prompt_id="p", completion_a="p-a", completion_b="p-b",
                             model_a="a", model_b="b", judge="pw", judge_model="jm", template="t",
                             template_version="v1", template_hash="x", settings_hash="s", sampling={},
                             orders=[PairVerdict(first="p-a", second="p-b")], winner=winner, p_a=p_a, status=status)

    pairs, report = binarize(prompts, comps, [verdict("b", 0.2), verdict(None, None, "unparsed")], BinarizeSpec())
    assert (pairs[0].chosen_model, pairs[0].score_chosen, pairs[0].score_rejected) == ("b", 0.8, pytest.approx(0.2))
    assert report.unusable_judgements == {"unparsed": 1}
    with pytest.raises(ValueError, match="pairwise"):
        binarize(prompts, comps, [verdict("b", 0.2)], BinarizeSpec(aspect="helpfulness"))
    _, report = binarize(prompts, comps, [verdict("tie", None)], BinarizeSpec(score="expected"))
    assert report.unusable_judgements == {"no expected score": 1} and report.skipped == {"fewer than 2 scored completions": 1}


def test_split_keeps_all_pairs_of_a_prompt_together():
    prompts, comps, judgements = scored_set({f"p{i}": {"a": 3.0, "b": 2.0, "c": 1.0} for i in range(10)})
    pairs, _ = binarize(prompts, comps, judgements, BinarizeSpec(strategy="all_pairs"))
    assert len(pairs) == 30
    train, test = split_pairs(pairs, 0.2, seed=0)
    assert len({p.prompt_id for p in test}) == 2 and len(test) == 6
    assert not {p.prompt_id for p in train} & {p.prompt_id for p in test}
    assert split_pairs(pairs, 0.2, seed=0) == (train, test) and split_pairs(pairs, 0.2, seed=1) != (train, test)
    assert split_pairs(pairs[:3], 0.5, seed=0) == (pairs[:3], [])  # one prompt: nothing to hold out


# ----------------------------------------------------------------------------- hygiene

def test_exact_and_eval_overlap():
    ps = [prompt("a", "Write a poem about the sea."), prompt("b", "write a  poem about THE sea."),
          prompt("c", "Tell me a joke."), prompt("d", "Please compose a short story about a dragon who learns to bake bread.")]
    assert exact_duplicates(ps) == {"b": "a"}
    evals = [prompt("mt-1", "Compose a short story about a dragon who learns to bake bread, in 100 words."),
             prompt("mt-2", "Tell me a joke.")]
    assert eval_overlap(ps, evals, n=8) == {"d": "mt-1", "c": "mt-2"}  # an 8-gram shared; a short one equal
    assert eval_overlap(ps, evals, n=20) == {"c": "mt-2"}


def test_clean_prompts_near_duplicates_with_minilm(tmp_path):
    ps = [prompt("a", "How do I bake sourdough bread at home?"),
          prompt("b", "How can I bake sourdough bread at home?"),
          prompt("c", "What is the capital of Australia?"),
          prompt("d", "How do I bake sourdough bread at home?"),
          prompt("e", "Summarize the plot of Hamlet in two sentences.")]
    assert near_duplicates(ps, 0.9) == {"b": "a", "d": "a"}
    evals = tmp_path / "eval.jsonl"
    evals.write_text('{"prompt_id": "ev", "prompt": "Summarize the plot of Hamlet in two sentences."}\n')
    kept, report = clean_prompts(ps, HygieneSpec(near_dup_threshold=0.9, eval_prompts=str(evals), ngram=5))
    assert [p.prompt_id for p in kept] == ["a", "c"]
    assert report.removed == {"exact duplicate": ["d"], "near duplicate": ["b"], "overlaps eval set": ["e"]}
    assert report.matched == {"d": "a", "b": "a", "e": "ev"} and report.counts["near duplicate"] == 1
    kept, report = clean_prompts(ps, HygieneSpec(exact_dedup=False, near_dup_threshold=None))
    assert kept == ps and report.removed == {}
