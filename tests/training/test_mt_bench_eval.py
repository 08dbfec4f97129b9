"""MT-Bench of a run's models: question selection, the models of a run, the judge's format, and a base
model answering through URIAL wherever it comes from (bundled, a local directory, a hub id in the
local Hugging Face cache). The engine test (both turns, grading prompts with references, table and
radar) is in tests/training/test_training.py, on the trained models loaded there."""

from __future__ import annotations

from collections import Counter

import pytest

from tests.support.helpers import GEMMA, GEMMA_SETTINGS, ROOT, SMOL, Recording
from rlaif.core.errors import ConfigError
from rlaif.recipe.spec import load_recipe
from rlaif.evaluation.mt_bench_data import CATEGORIES
from rlaif.evaluation.mt_bench import (ModelUnderTest, answer_questions, has_chat_template, mt_bench_judge, parse_models,
                                     run_models, select_questions)


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
    for stage in ("dpo", "rounds/2/dpo", "rounds/10/dpo"):  # on-policy rounds: every round's model
        (tmp_path / stage).mkdir(parents=True)
        (tmp_path / stage / "config.json").write_text("{}")
    (tmp_path / "rounds" / "3" / "dpo").mkdir(parents=True)  # round 3 not trained yet
    assert [(m.label, m.model) for m in run_models(tmp_path, recipe)][2:] == [
        ("ddpo", str(tmp_path / "dpo")), ("round-2", str(tmp_path / "rounds/2/dpo")),
        ("round-10", str(tmp_path / "rounds/10/dpo"))]
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


def cache_model(hf_home, repo_id: str, model_dir) -> None:
    """`model_dir`'s files in a Hugging Face cache under `hf_home` as the hub writes them:
    hub/models--ORG--NAME/snapshots/<commit>/<file> (links, as the hub's links to its blobs) and refs/main."""
    import hashlib
    from pathlib import Path

    repo = Path(hf_home) / "hub" / ("models--" + repo_id.replace("/", "--"))
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    (repo / "snapshots" / commit).mkdir(parents=True)
    for f in Path(model_dir).iterdir():
        (repo / "snapshots" / commit / f.name).symlink_to(f)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


@pytest.fixture
def hf_cache(tmp_path, monkeypatch, smollm2_dir):
    """A local Hugging Face cache holding Gemma 3 270M (a base model: no chat template) as
    google/gemma-3-270m and SmolLM2 (a chat model) as HuggingFaceTB/SmolLM2-135M-Instruct, read offline
    as a user who downloaded them reads it (huggingface_hub reads its settings at import: set there too)."""
    import huggingface_hub.constants as hub

    from rlaif.engines.models import prepare_bundled

    home = tmp_path / "hf"
    cache_model(home, "google/gemma-3-270m", prepare_bundled(GEMMA))
    cache_model(home, "HuggingFaceTB/SmolLM2-135M-Instruct", smollm2_dir)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    return home


def test_a_base_model_is_known_wherever_it_comes_from(hf_cache, tmp_path):
    import shutil

    from rlaif.engines.models import prepare_bundled

    local = tmp_path / "gemma-copy"
    shutil.copytree(prepare_bundled(GEMMA), local)
    for base in (GEMMA, str(local), "google/gemma-3-270m"):
        assert not has_chat_template(base), base
    assert has_chat_template(SMOL) and has_chat_template("HuggingFaceTB/SmolLM2-135M-Instruct")


def test_a_base_model_given_as_a_hub_id_answers_mt_bench_through_urial(hf_cache, gemma_engine, tmp_path):
    """Gemma 3 270M named by its hub id, found in the local cache: both turns are asked as URIAL text
    (the session's Gemma engine answers them, as the one vLLM would load from that cache)."""
    from rlaif.core.store import RunStore
    from rlaif.engines.pool import EnginePool, EngineSpec
    from rlaif.runners.context import RunContext

    hub_id = "google/gemma-3-270m"
    tap = Recording(gemma_engine)
    with EnginePool() as pool:
        pool.put(EngineSpec(hub_id, None, GEMMA_SETTINGS), tap)
        answers = answer_questions(RunStore(tmp_path / "mt"), ModelUnderTest("base", hub_id), select_questions(1),
                                   RunContext(pool=pool, engine=GEMMA_SETTINGS), max_tokens=4)
    assert pool.loads == {} and len(tap.requests) == 2  # turn 1, then turn 2 after its own answer
    assert all(r.messages is None and "# Query" in r.prompt for r in tap.requests)
    (turns,) = answers.values()
    assert len(turns) == 2 and turns[0].text in tap.requests[1].prompt
