"""A judge kind and a backend, each added from one file outside the package (tests/extensions/, the
kind with its template beside it), run through the pipeline: generate, judge, binarize, against the
strict OpenAI stand-in over real HTTP. Nothing in rlaif/ names either of them."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from datasets import load_from_disk
from prefect import flow

from rlaif.core.errors import ConfigError
from rlaif.core.records import Judgement
from rlaif.core.store import RunStore
from rlaif.flows.pipeline import run_stages
from rlaif.recipe.dry_run import estimate
from rlaif.recipe.preflight import preflight
from rlaif.recipe.spec import load_recipe
from rlaif.judges.stage import stored_judgements
from rlaif.rehearsal.openai_server import OpenAIServer
from rlaif.runners.context import flow_run
from tests.extensions import conciseness_kind, urllib_backend  # noqa: F401  (defining them registers them)
from tests.support.helpers import ROOT, write_prompts

KEY = "sk-test-key-extensions"
PROMPTS = ["Name a red fruit.", "What is 2 + 2?", "Say hi."]


@pytest.fixture
def srv(monkeypatch):
    monkeypatch.setenv("TEST_OPENAI_KEY", KEY)
    with OpenAIServer(api_key=KEY) as s:
        yield s


def write_recipe(tmp_path: Path, srv, judge: dict, engine: dict | None = None) -> Path:
    """Two members and a judge on the stand-in; `engine` (e.g. a backend) for all three."""
    write_prompts(tmp_path / "prompts.jsonl", PROMPTS)
    ep = {"base_url": srv.base_url, "api_key_env": "TEST_OPENAI_KEY", "provider": "openai", "max_retries": 0}
    own = {"engine": engine} if engine else {}
    data = {"name": "extensions", "prompts": {"source": str(tmp_path / "prompts.jsonl")},
            "hygiene": {"near_dup_threshold": None}, "binarize": {"test_fraction": 0},
            "generators": [{"name": name, "model": model, "sampling": {"max_tokens": 16}, "endpoint": ep, **own}
                           for name, model in (("a", "gpt-4o-mini"), ("b", "gpt-4.1-nano"))],
            "judge": {"name": "j", "model": "gpt-4o-mini", "endpoint": ep, **judge, **own}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@flow
def until_binarize(recipe, out: str) -> dict:
    with flow_run(recipe, out) as ctx:
        return {r.stage: r for r in run_stages(ctx, "binarize").reports}


def chats(srv) -> list[dict]:
    return [r for r in srv.requests if r["path"].endswith("/chat/completions")]


def test_the_extensions_live_outside_the_package():
    text = "\n".join(p.read_text() for p in (ROOT / "rlaif").rglob("*.py"))
    assert "conciseness" not in text and "urllib_backend" not in text and '"urllib"' not in text


def test_a_judge_kind_from_one_file_judges_and_binarizes(tmp_path, srv, prefect_harness):
    path = write_recipe(tmp_path, srv, {"kind": "conciseness", "options": {"max_words": 20}})
    recipe = load_recipe(path)
    spec = recipe.judge_spec()
    assert spec.options.max_words == 20 and not spec.pairwise
    out = str(tmp_path / "run")
    stages = until_binarize(recipe, out)
    assert stages["judge"].notes["parsed"] == 6 and stages["binarize"].count_out >= 1  # a tied prompt is skipped

    # its own template, from beside its file, with its own option
    asked = [r["body"]["messages"][0]["content"] for r in chats(srv) if "Rate how concise" in str(r["body"])]
    assert len(asked) == 6 and all("in at most 20 words" in text for text in asked)
    records = stored_judgements(RunStore(out), "j")  # read back as the kind's records (pointwise)
    assert {type(j) for j in records} == {Judgement} and {j.kind for j in records} == {"conciseness"}
    assert all(j.aspects["concise"].probs for j in records)  # the server gave the verdict's probabilities...
    rows = load_from_disk(str(Path(out) / "dataset"))["train_prefs"]
    scores = {s for row in rows for s in (row["score_chosen"], row["score_rejected"])}
    assert scores <= {1.0, 2.0, 3.0}  # ...and its score rule reads the sampled verdict, not their mean
    assert {row["judge"] for row in rows} == {"j"} and all(r["score_chosen"] > r["score_rejected"] for r in rows)

    # an option shapes the verdicts: changing it changes the settings hash, so the next run re-judges
    assert load_recipe(path, ["judge.options.max_words=30"]).judge_spec().settings_hash() != spec.settings_hash()
    with pytest.raises(ConfigError, match="max_words"):
        load_recipe(path, ["judge.options.max_words=0"])


def test_a_backend_from_one_file_generates_judges_and_binarizes(tmp_path, srv, prefect_harness):
    path = write_recipe(tmp_path, srv, {"kind": "ultrafeedback", "options": {"aspects": ["helpfulness"]}},
                        engine={"backend": "urllib"})
    recipe = load_recipe(path)
    out = str(tmp_path / "run")
    preflight(recipe, out, {"generate", "judge", "binarize"})  # its own check: the server lists the models
    assert all(r["headers"]["user-agent"].startswith("Python-urllib") for r in srv.requests)
    assert {e.where for e in estimate(recipe)} == {f"{srv.base_url} (urllib)"}  # the dry run asks it too

    stages = until_binarize(recipe, out)
    assert stages["generate"].count_out == 6 and stages["judge"].notes["parsed"] == 6
    assert stages["binarize"].count_out >= 1
    sent = chats(srv)
    # 6 answers, then 3 joint ratings (one per prompt: the default on a hosted endpoint), all through urllib
    assert len(sent) == 6 + 3 and all(r["headers"]["user-agent"].startswith("Python-urllib") for r in sent)

    bad = write_recipe(tmp_path, srv, {"kind": "ultrafeedback"}, engine={"backend": "urllib"})
    bad.write_text(bad.read_text().replace("gpt-4.1-nano", "no-such-model"))
    with pytest.raises(ConfigError, match=r"\(urllib\) does not serve model 'no-such-model'"):
        preflight(load_recipe(bad), str(tmp_path / "other"), {"generate"})
    with pytest.raises(ConfigError, match=r"unknown backend 'nope' \(backends: .*urllib"):
        load_recipe(path, ["judge.engine.backend=nope"])


def test_kind_settings_written_beside_kind_are_read_as_its_options():
    from rlaif.judges.spec import JudgeSpec

    old = JudgeSpec(name="uf", model="m", aspects=["honesty"])  # a recipe written before `options:`
    assert old.options.aspects == ["honesty"]
    assert old.settings_hash() == JudgeSpec(name="uf", model="m", options={"aspects": ["honesty"]}).settings_hash()
    mt = JudgeSpec(name="mt", kind="mt_bench_single", model="m", explanation_chars=100)
    assert mt.options.explanation_chars == 100
    assert JudgeSpec(name="c", kind="critique", model="m", aspects=["honesty"]).options.model_dump() == {}
    with pytest.raises(ValueError, match="aspects is set twice: write it once, under options:"):
        JudgeSpec(name="uf", model="m", aspects=["honesty"], options={"aspects": ["honesty"]})
    with pytest.raises(ValueError, match="options of the pairwise kind: aspects: Extra inputs"):
        JudgeSpec(name="p", kind="pairwise", model="m", options={"aspects": ["honesty"]})
