"""MT-Bench of a run's models: both turns, FastChat's grading prompts with references, table and radar."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from conftest import ROOT, SMOL, SMOL_SETTINGS
from rlaif.core.errors import ConfigError
from rlaif.flows.recipe import load_recipe
from rlaif.judges.mt_bench_data import CATEGORIES, load_mt_bench
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


class Recording:
    """The session's real SmolLM2 engine, keeping every request it was sent."""

    def __init__(self, engine):
        self.engine, self.label, self.requests = engine, engine.label, []

    def generate(self, requests, progress=None):
        self.requests += list(requests)
        return self.engine.generate(requests, progress)

    def close(self):
        pass


def test_rlaif_evaluate_mt_bench_on_a_run(tmp_path, smol_engine, sft_then_dpo, trained_engines):
    """`rlaif evaluate RUN --mt-bench --limit 8`: base (bundled SmolLM2, the session's engine, also the
    judge), dSFT and dDPO (the session's trained tiny models, given by `--model`: the run's own are
    found by test_models_of_a_run_and_given_models) answer both turns; table, radar, shards; a rerun
    asks nothing."""
    from rlaif.engines.pool import EnginePool, EngineSpec
    from rlaif.flows.cli import main
    from rlaif.flows.pipeline import shared_engines

    run = tmp_path / "run"
    recipe = load_recipe(ROOT / "recipes" / "quickstart.yaml", [
        f"engine.max_model_len={SMOL_SETTINGS.max_model_len}", f"engine.cpu_kv_cache_gb={SMOL_SETTINGS.cpu_kv_cache_gb}",
        "judges.0.explanation_chars=24"])
    run.mkdir()
    (run / "recipe.json").write_text(recipe.model_dump_json())
    sft, dpo = trained_engines
    models = ["--model", f"base={SMOL}", "--model", f"dsft={sft}", "--model", f"ddpo={dpo}"]
    tap = Recording(smol_engine)
    with EnginePool() as pool, shared_engines(pool):
        pool.put(EngineSpec(SMOL, None, SMOL_SETTINGS), tap)
        for path, engine in trained_engines.items():
            pool.put(EngineSpec(path, None, SMOL_SETTINGS), engine)
        assert main(["evaluate", str(run), "--mt-bench", "--limit", "8", "--max-tokens", "8", *models]) == 0
        loads = dict(pool.loads)
        assert loads == {}  # every model is the session's, found under the recipe's engine settings

        out = run / "eval" / "mt_bench"
        result = json.loads((out / "scores.uf-smollm2.json").read_text())
        assert list(result["models"]) == ["base", "dsft", "ddpo"] and len(result["questions"]) == 8
        for label, s in result["models"].items():
            assert s["turns"] == 16 and s["graded"] + s["unparsed"] + s["failed"] + s["unanswered"] == 16
            assert s["graded"] >= 1 and 1 <= s["score"] <= 10
            assert 1 <= s["expected"] <= 10  # from the rating token's probabilities (vLLM returns them)
        table = (out / "table.uf-smollm2.md").read_text()
        assert table.startswith("| model | score | turn 1 | turn 2 | Writing |") and "| graded | expected |" in table
        assert "| ddpo |" in table
        if all(len(s["categories"]) == 8 for s in result["models"].values()):
            assert (out / "radar.uf-smollm2.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

        # turn 2 follows the model's own turn-1 answer
        from rlaif.core.records import Completion
        from rlaif.core.store import RunStore

        store = RunStore(out)
        base = {c.prompt_id: c for k in store.keys("completions") for c in store.read("completions", k, Completion)
                if c.model == "base"}
        answers = [r for r in tap.requests if r.messages and r.messages[0]["role"] == "user"]
        second = [r for r in answers if len(r.messages) == 3]
        assert len(second) == 8
        q81 = load_mt_bench()[81]
        (r81,) = [r for r in second if r.messages[0]["content"] == q81.turns[0]]
        assert r81.messages[1] == {"role": "assistant", "content": base["mt_bench-81-turn1"].text}
        assert r81.messages[2] == {"role": "user", "content": q81.turns[1]}

        # the math judge prompts hold GPT-4's reference answers (and turn 2 both turns' answers)
        q111 = load_mt_bench()[111]
        grading = [r.messages[1]["content"] for r in tap.requests if r.messages and r.messages[0]["role"] == "system"]
        math = [g for g in grading if q111.turns[0] in g]
        assert len(math) == 6  # three models, two turns
        assert all("Start of Reference Answer" in g and q111.reference[0] in g for g in math)
        two = [g for g in math if q111.turns[1] in g]
        assert len(two) == 3 and all(q111.reference[1] in g for g in two)
        assert any(base["mt_bench-111-turn1"].text in g and base["mt_bench-111-turn2"].text in g for g in two)

        # a rerun computes nothing: no request, no model loaded
        sent = len(tap.requests)
        assert main(["evaluate", str(run), "--mt-bench", "--limit", "8", "--max-tokens", "8", *models]) == 0
        assert len(tap.requests) == sent and pool.loads == loads
        assert json.loads((out / "scores.uf-smollm2.json").read_text())["models"] == result["models"]

        # any model by path or name, here the bundled one again under its own label
        assert main(["evaluate", str(run), "--mt-bench", "--limit", "8", "--max-tokens", "8",
                     "--model", f"smol={SMOL}"]) == 0
        assert list(json.loads((out / "scores.uf-smollm2.json").read_text())["models"]) == ["smol"]
