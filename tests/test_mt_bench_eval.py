"""MT-Bench of a run's models, without an engine: question selection, the models of a run, the judge's
format. The engine test (both turns, grading prompts with references, table and radar) is in
tests/test_training.py, on the trained models loaded there."""

from __future__ import annotations

from collections import Counter

import pytest

from conftest import ROOT, SMOL
from rlaif.core.errors import ConfigError
from rlaif.flows.recipe import load_recipe
from rlaif.judges.mt_bench_data import CATEGORIES
from rlaif.training.mt_bench import (ModelUnderTest, mt_bench_judge, parse_models, run_models, select_questions)


def test_limit_takes_questions_round_robin_over_the_categories():
    eight = select_questions(8)
    assert Counter(q.category for q in eight) == {c: 1 for c in CATEGORIES}
    assert [q.question_id for q in eight] == [81, 91, 101, 111, 121, 131, 141, 151]
    assert len(select_questions(None)) == 80 and len(select_questions(10)) == 10
    assert {q.question_id for q in select_questions(16)} >= {82, 112}


def test_models_of_a_run_and_given_models(tmp_path):
    recipe = load_recipe(ROOT / "recipes" / "quickstart.yaml")
    (tmp_path / "sft").mkdir()
    (tmp_path / "sft" / "config.json").write_text("{}")
    assert run_models(tmp_path, recipe) == [ModelUnderTest("base", SMOL), ModelUnderTest("dsft", str(tmp_path / "sft"))]
    assert parse_models(["a=/x/model", "/y/other/"]) == [ModelUnderTest("a", "/x/model"), ModelUnderTest("other", "/y/other/")]
    with pytest.raises(ConfigError, match="two models named alike"):
        parse_models(["/x/m", "/y/m"])


def test_any_text_judge_of_the_recipe_grades_in_mt_bench_format():
    recipe = load_recipe(ROOT / "recipes" / "quickstart.yaml")
    for name in ("uf-smollm2", "pairwise-smollm2"):
        spec = mt_bench_judge(recipe.judge_spec(name))
        assert (spec.name, spec.model, spec.kind, spec.sampling.temperature) == (name, SMOL, "mt_bench_single", 0.0)
    unstructured = mt_bench_judge(recipe.judge_spec().model_copy(update={"structured": False}))
    assert unstructured.sampling.max_tokens == 1024  # room for a free explanation before [[rating]]
