"""The on-policy rounds' binarize strategies: best-vs-worst of the policy's own samples, and the
policy's best against the ensemble's best; every prompt left out counted under its reason."""

import pytest
from pydantic import ValidationError

from rlaif.preferences.binarize import NO_ENSEMBLE, NO_POLICY, BinarizeSpec, binarize
from tests.preferences.test_binarize import scored_set

POLICY = ["policy-1", "policy-2", "policy-3"]


def test_best_vs_worst_samples_pairs_only_the_policys_answers():
    prompts, comps, judgements = scored_set({
        "p1": {"policy-1": 3.0, "policy-2": 4.5, "policy-3": 2.0, "ens": 5.0},  # the ensemble's 5 is not used
        "p2": {"policy-1": 3.0, "ens": 1.0},  # one policy answer: no on-policy pair
        "p3": {"policy-1": 3.0, "policy-2": 3.0}})
    pairs, report = binarize(prompts, comps, judgements, BinarizeSpec(strategy="best_vs_worst_samples", policy=POLICY))
    assert [(x.prompt_id, x.chosen_model, x.rejected_model, x.score_chosen, x.score_rejected) for x in pairs] == [
        ("p1", "policy-2", "policy-3", 4.5, 2.0)]
    assert report.skipped == {"one completion": 1, "all completions tie": 1}


def test_policy_vs_ensemble_pairs_the_two_bests_the_higher_chosen():
    prompts, comps, judgements = scored_set({
        "up": {"policy-1": 4.0, "policy-2": 2.0, "ens-a": 3.0, "ens-b": 1.0},  # the policy wins
        "down": {"policy-1": 2.0, "policy-2": 2.5, "ens-a": 4.0},  # the ensemble wins
        "even": {"policy-1": 3.0, "ens-a": 3.0},
        "alone": {"policy-1": 3.0, "policy-2": 1.0},
        "none": {"ens-a": 3.0, "ens-b": 1.0}})
    spec = BinarizeSpec(strategy="policy_vs_ensemble", policy=POLICY)
    pairs, report = binarize(prompts, comps, judgements, spec)
    assert {x.prompt_id: (x.chosen_model, x.rejected_model) for x in pairs} == {
        "up": ("policy-1", "ens-a"), "down": ("ens-a", "policy-2")}
    assert report.skipped == {"no pair meets min_margin": 1, NO_ENSEMBLE: 1, NO_POLICY: 1}


def test_the_on_policy_strategies_need_the_policys_members_and_leave_other_hashes_alone():
    with pytest.raises(ValidationError, match="rounds.strategy"):
        BinarizeSpec(strategy="policy_vs_ensemble")
    assert "policy" not in BinarizeSpec().model_dump()  # a plain run's version hash is what it was
    assert BinarizeSpec(strategy="best_vs_worst_samples", policy=POLICY).model_dump()["policy"] == POLICY
