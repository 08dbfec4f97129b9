"""Prefect flows: content-hash caching, judge-only recomputation, judge swap, retries, stage errors.

Cache hits are read from the task states (a report's `cached` is its task's state being Cached)
and from the run directory (shard files not rewritten), never from timings.
"""

import json
from pathlib import Path

import pytest
import yaml
from datasets import load_from_disk
from prefect import flow

from conftest import SERVER_ERROR, FakeOpenAI, chat_completion, serving
from flows.caching import StageError
from flows.cli import main
from flows.pipeline import RETRY_MARKER, run, run_stages
from flows.recipe import load_recipe
from generation.records import Message, Prompt

TINY = {
    "name": "tiny", "prompts": {"source": None},
    "generators": [
        {"name": "smol-a", "model": "smollm2-135m-instruct", "sampling": {"temperature": 0.7, "max_tokens": 16, "seed": 0}},
        {"name": "smol-b", "model": "smollm2-135m-instruct", "sampling": {"temperature": 1.0, "max_tokens": 16, "seed": 1}},
    ],
    "judge": {"name": "uf", "model": "smollm2-135m-instruct", "aspects": ["helpfulness", "honesty"],
              "sampling": {"temperature": 0.0, "max_tokens": 64}},
    "binarize": {"test_fraction": 0},
    "engine": {"max_model_len": 1024, "cpu_kv_cache_gb": 1},
}


def write_prompts(path: Path, texts: list[str]) -> None:
    path.write_text("".join(json.dumps({"prompt_id": f"p{i}", "prompt": t}) + "\n" for i, t in enumerate(texts)))


def stamps(root: Path, pattern: str) -> dict:
    return {str(p.relative_to(root)): (p.stat().st_ino, p.stat().st_mtime_ns) for p in root.glob(pattern)}


def by_stage(reports):
    return {r.stage: r for r in reports}


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, smollm2_dir, prefect_harness):
    tmp = tmp_path_factory.mktemp("flows")
    write_prompts(tmp / "prompts.jsonl", ["Name a fruit that is red.", "What is 2 + 2?"])
    recipe_path = tmp / "recipe.yaml"
    recipe_path.write_text(yaml.safe_dump({**TINY, "prompts": {"source": str(tmp / "prompts.jsonl")}}))
    out = tmp / "run"
    reports = run(load_recipe(recipe_path), out)
    return recipe_path, out, by_stage(reports)


@pytest.mark.engine
def test_first_run_computes_every_stage(first_run):
    _, out, stages = first_run
    assert not any(r.cached for r in stages.values())
    assert stages["generate"].count_out == 4 and stages["binarize"].count_out >= 1
    assert list((out / ".prefect" / "results").iterdir())  # results live in the run directory
    assert (out / "dataset").resolve() == out / "versions" / "0001"


@pytest.mark.engine
def test_rerun_with_unchanged_inputs_recomputes_nothing(first_run):
    recipe_path, out, _ = first_run
    before = stamps(out, "**/shard-*.jsonl") | stamps(out, "versions/**/*")
    stages = by_stage(run(load_recipe(recipe_path), out))
    assert all(stages[s].cached for s in ("generate", "judge", "binarize"))
    assert stamps(out, "**/shard-*.jsonl") | stamps(out, "versions/**/*") == before


@pytest.mark.engine
def test_a_judge_setting_change_recomputes_only_judging_and_after(first_run):
    recipe_path, out, _ = first_run
    completions = stamps(out, "completions/*")
    judged = stamps(out, "judgements/uf/*")
    stages = by_stage(run(load_recipe(recipe_path, ["judge.sampling.max_tokens=48"]), out))
    assert stages["generate"].cached
    assert not stages["judge"].cached and not stages["binarize"].cached
    assert stamps(out, "completions/*") == completions  # nothing generated
    new = set(stamps(out, "judgements/uf/*")) - set(judged)
    assert len(new) == 1 and stages["judge"].count_in == 4


@pytest.mark.engine
def test_judge_swap_reuses_completions_and_prints_agreement(first_run, capsys):
    recipe_path, out, _ = first_run
    other = recipe_path.parent / "other.yaml"
    other.write_text(yaml.safe_dump({"judge": {**TINY["judge"], "name": "uf-help", "aspects": ["helpfulness"]}}))
    completions = stamps(out, "completions/*")
    assert main(["run", str(recipe_path), "--out", str(out), "--judge", str(other)]) == 0
    assert stamps(out, "completions/*") == completions  # no generator engine started
    summary = {r["stage"]: r for r in json.loads((out / "judge-swap" / "uf-help" / "summary.json").read_text())}
    assert summary["generate"]["cached"] and summary["judge (previous)"]["cached"]
    assert not summary["judge"]["cached"] and summary["judge"]["notes"]["judge"] == "uf-help"
    report = json.loads((out / "judge-swap" / "uf-help" / "agreement.json").read_text())
    assert report["previous"] == "uf" and report["completions"] == 4
    assert "agreement with uf: spearman=" in capsys.readouterr().out
    version = (out / "dataset").resolve()  # the swap published the next version
    assert json.loads((version / "manifest.json").read_text())["judge"]["name"] == "uf-help"
    assert {r["judge"] for r in load_from_disk(str(version))["train_prefs"]} == {"uf-help"}

    # the recipe's own judge again: nothing recomputed but the publish, which takes the pointer back
    stages = by_stage(run(load_recipe(recipe_path), out))
    assert stages["generate"].cached and stages["judge"].cached and not stages["binarize"].cached
    version = (out / "dataset").resolve()
    assert json.loads((version / "manifest.json").read_text())["judge"]["name"] == "uf"


# ----------------------------------------------------------------------------- a real endpoint that fails
class FailsOnMarkedPrompts(FakeOpenAI):
    """An OpenAI-compatible chat endpoint that answers HTTP 503 to prompts containing FAIL while broken."""

    broken = True
    seen: list[str] = []

    def reply(self, body):
        text = body["messages"][-1]["content"]
        type(self).seen.append(text)
        if self.broken and "FAIL" in text:
            return 503, SERVER_ERROR
        return 200, chat_completion(body["model"], "ok")


@pytest.fixture
def endpoint():
    FailsOnMarkedPrompts.broken, FailsOnMarkedPrompts.seen = True, []
    with serving(FailsOnMarkedPrompts) as url:
        yield url


def remote_recipe(tmp_path, url, retries, **generator):
    write_prompts(tmp_path / "prompts.jsonl", ["Say hi.", "Say FAIL."])
    data = {**TINY, "prompts": {"source": str(tmp_path / "prompts.jsonl")},
            "generators": [{"name": "served", "model": "served-smol", "sampling": {"max_tokens": 8}, **generator,
                            "endpoint": {"base_url": url, "max_retries": 0}}],
            "flow": {"retries": retries, "retry_delay_seconds": 0, "retry_jitter_factor": 0}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_recipe(path)


@flow
def generate_only(recipe, out: str, prompts=None):
    return run_stages(recipe, out, "generate") if prompts is None else run_stages_on(recipe, out, prompts)


def run_stages_on(recipe, out, prompts):
    from flows.pipeline import generate_task, call

    return call(generate_task, out, prompts, recipe, out, remote=True, recipe=recipe)


def test_remote_rows_are_retried_by_prefect_with_backoff_then_kept(tmp_path, endpoint, prefect_harness):
    recipe = remote_recipe(tmp_path, endpoint, retries=2)
    out = str(tmp_path / "run")
    stages = by_stage(generate_only(recipe, out))
    seen = FailsOnMarkedPrompts.seen
    # three tries (1 + 2 Prefect retries); each retry re-sends only the failed row
    assert seen.count("Say FAIL.") == 3 and seen.count("Say hi.") == 1
    assert stages["generate"].notes["failed"] == 1 and stages["generate"].notes["retried next run"] == 1
    assert (Path(out) / RETRY_MARKER).exists()

    # the endpoint recovers: the next run is not served the cached failure; it re-sends that row only
    FailsOnMarkedPrompts.broken, FailsOnMarkedPrompts.seen = False, []
    stages = by_stage(generate_only(recipe, out))
    assert FailsOnMarkedPrompts.seen == ["Say FAIL."]
    assert stages["generate"].count_out == 2 and not (Path(out) / RETRY_MARKER).exists()
    assert by_stage(generate_only(recipe, out))["generate"].cached


def test_a_stage_error_names_the_stage_model_and_row(tmp_path, endpoint, prefect_harness):
    recipe = remote_recipe(tmp_path, endpoint, retries=0, system_prompt="Be brief.")
    good = Prompt(prompt_id="fine", messages=[Message(role="user", content="Say hi.")])
    broken = Prompt(prompt_id="broken-row", messages=[])  # a record no prompt file would give
    with pytest.raises(StageError) as e:
        generate_only(recipe, str(tmp_path / "run"), [good, broken])
    assert (e.value.stage, e.value.model, e.value.row) == ("generate", "served", "broken-row")
    assert "stage 'generate', model served, row broken-row: IndexError" in str(e.value)
