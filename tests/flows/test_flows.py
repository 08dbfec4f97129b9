"""Prefect flows: stage state read from the shards, caching on top of it, judge-only recomputation,
`--set binarize.seed=1` rerunning binarize and training only, judge swap, `models_per_prompt`,
retries of transient rows (generation and judging alike), stage errors.

One run is built per module; each test works on its own copy of it, so the tests stand alone and
run in any order. Cache hits are read from the reports and from the run directory (shard files
not rewritten), never from timings.
"""

import json
import shutil
from pathlib import Path

import pytest
import yaml
from datasets import load_from_disk
from prefect import flow

from tests.support.endpoints import asked, judging, said, serving, verdict
from tests.support.helpers import SMOL, SMOL_SETTINGS, write_prompts
from rlaif.core.errors import StageError
from rlaif.core.records import Judgement, Message, Prompt
from rlaif.core.store import RunStore
from rlaif.cli.main import main
from rlaif.runners.context import flow_run, using
from rlaif.flows.pipeline import pipeline_flow, run_step
from rlaif.flows.steps import generate_step
from rlaif.recipe.spec import load_recipe
from rlaif.prompts.prompt_sets import write_prompt_chunks

TINY = {
    "name": "tiny", "prompts": {"source": None}, "hygiene": {"near_dup_threshold": None},
    "generators": [
        {"name": "smol-a", "model": SMOL, "sampling": {"temperature": 0.7, "max_tokens": 16, "seed": 0}},
        {"name": "smol-b", "model": SMOL, "sampling": {"temperature": 1.0, "max_tokens": 16, "seed": 1}},
    ],
    "judge": {"name": "uf", "model": SMOL, "aspects": ["helpfulness", "honesty"],
              "sampling": {"temperature": 0.0, "max_tokens": 64}},
    "binarize": {"test_fraction": 0},
    "engine": SMOL_SETTINGS.model_dump(),
}


def stamps(root: Path, pattern: str) -> dict:
    return {str(p.relative_to(root)): (p.stat().st_ino, p.stat().st_mtime_ns) for p in root.glob(pattern)}


def by_stage(reports):
    return {r.stage: r for r in reports}


@pytest.fixture(scope="module")
def built(tmp_path_factory, smol_engine, prefect_harness):
    """One run of the tiny recipe, built once with the session's engine."""
    from rlaif.engines.pool import EnginePool, EngineSpec

    tmp = tmp_path_factory.mktemp("flows")
    write_prompts(tmp / "prompts.jsonl", ["Name a fruit that is red.", "What is 2 + 2?"])
    (tmp / "recipe.yaml").write_text(yaml.safe_dump({**TINY, "prompts": {"source": str(tmp / "prompts.jsonl")}}))
    with EnginePool() as pool, using(pool=pool):
        pool.put(EngineSpec(SMOL, None, SMOL_SETTINGS), smol_engine)
        reports = pipeline_flow(load_recipe(tmp / "recipe.yaml"), str(tmp / "run"))
    return tmp, by_stage(reports)


@pytest.fixture
def run_copy(built, tmp_path, pool):
    """This test's own copy of the built run (recipe, prompts, run dir), and the session's engines."""
    src, stages = built
    for name in ("prompts.jsonl", "recipe.yaml"):
        shutil.copy(src / name, tmp_path / name)
    (tmp_path / "recipe.yaml").write_text((src / "recipe.yaml").read_text().replace(str(src), str(tmp_path)))
    shutil.copytree(src / "run", tmp_path / "run", symlinks=True)
    with using(pool=pool):
        yield tmp_path / "recipe.yaml", tmp_path / "run", stages


@pytest.mark.engine
def test_first_run_computes_every_stage(run_copy):
    _, out, stages = run_copy
    assert not any(r.cached for r in stages.values())
    assert stages["generate"].count_out == 4 and stages["binarize"].count_out >= 1
    assert (out / "dataset").resolve() == out / "versions" / "0001"
    # every verdict says what answered: the local engine, its version and the model's folder
    import vllm

    from rlaif.engines.models import prepare_bundled

    served = json.loads((out / "judgements" / "uf" / "report.json").read_text())["served"]
    assert list(served) == [f"{Path(prepare_bundled(SMOL)).name} on vllm {vllm.__version__}"]
    assert sum(served.values()) == 4
    assert f"`{next(iter(served))}` (4)" in (out / "versions" / "0001" / "README.md").read_text()


@pytest.mark.engine
def test_rerun_with_unchanged_inputs_recomputes_nothing(run_copy):
    recipe_path, out, _ = run_copy
    before = stamps(out, "**/shard-*.jsonl") | stamps(out, "versions/**/*")
    stages = by_stage(pipeline_flow(load_recipe(recipe_path), str(out)))
    assert all(stages[s].cached for s in ("generate", "judge", "binarize"))
    assert stamps(out, "**/shard-*.jsonl") | stamps(out, "versions/**/*") == before
    assert list((out / ".prefect" / "results").iterdir())  # the done stages' manifests, kept by Prefect


@pytest.mark.engine
def test_a_judge_setting_change_recomputes_only_judging_and_after(run_copy):
    recipe_path, out, _ = run_copy
    completions = stamps(out, "completions/*")
    judged = stamps(out, "judgements/uf/shard-*")
    stages = by_stage(pipeline_flow(load_recipe(recipe_path, ["judge.sampling.max_tokens=48"]), str(out)))
    assert stages["generate"].cached
    assert not stages["judge"].cached and not stages["binarize"].cached
    assert stamps(out, "completions/*") == completions  # nothing generated
    new = set(stamps(out, "judgements/uf/shard-*")) - set(judged)
    assert len(new) == 2 and stages["judge"].count_in == 4  # the new shard and its metadata
    assert (out / "dataset").resolve().name == "0002"


@pytest.mark.engine
def test_judge_swap_reuses_completions_and_prints_agreement(run_copy, capsys):
    recipe_path, out, _ = run_copy
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
    assert "agreement with uf: spearman=" in capsys.readouterr().err
    version = (out / "dataset").resolve()  # the swap published the next version
    assert json.loads((version / "manifest.json").read_text())["judge"]["name"] == "uf-help"
    assert {r["judge"] for r in load_from_disk(str(version))["train_prefs"]} == {"uf-help"}

    # the recipe's own judge again: nothing recomputed but the publish, which takes the pointer back
    stages = by_stage(pipeline_flow(load_recipe(recipe_path), str(out)))
    assert stages["generate"].cached and stages["judge"].cached and not stages["binarize"].cached
    version = (out / "dataset").resolve()
    assert json.loads((version / "manifest.json").read_text())["judge"]["name"] == "uf"


@pytest.mark.engine
def test_set_binarize_seed_reruns_only_binarize_and_what_follows(run_copy, tiny_model_dir):
    """`rlaif run RECIPE --set binarize.seed=1`: no generation, no judging; a new dataset version,
    and dSFT trained again on it."""
    from rlaif.training.common import stage_state

    recipe_path, out, _ = run_copy
    data = yaml.safe_load(recipe_path.read_text())
    data["train"] = {"sft": {"model": tiny_model_dir, "max_steps": 1, "warmup_steps": 0,  # lr 0 on a warmup step
                           "per_device_train_batch_size": 2, "max_length": 64}}
    recipe_path.write_text(yaml.safe_dump(data))
    assert main(["run", str(recipe_path), "--out", str(out)]) == 0  # dSFT on version 0001
    trained = stage_state(out / "sft")
    shards = stamps(out, "completions/shard-*") | stamps(out, "judgements/uf/shard-*")
    assert main(["run", str(recipe_path), "--out", str(out), "--set", "binarize.seed=1"]) == 0
    stages = {r["stage"]: r for r in json.loads((out / "summary.json").read_text())}
    assert stages["generate"]["cached"] and stages["judge"]["cached"]
    assert not stages["binarize"]["cached"] and not stages["train-sft"]["cached"]
    assert stamps(out, "completions/shard-*") | stamps(out, "judgements/uf/shard-*") == shards
    version = (out / "dataset").resolve()
    assert version.name == "0002" and json.loads((version / "manifest.json").read_text())["binarize"]["seed"] == 1
    assert stage_state(out / "sft")["inputs"] != trained["inputs"]  # trained again, on 0002


@pytest.mark.engine
def test_models_per_prompt_draws_k_members_per_prompt(tmp_path, pool):
    """`models_per_prompt: 2` of three members, through `rlaif generate`: each prompt is answered by the
    two members drawn for it with the recipe's seed, and no other."""
    from rlaif.core.records import Completion
    from rlaif.generation.ensemble import assign
    from rlaif.prompts.prompt_sets import load_prompts

    prompts = write_prompts(tmp_path / "prompts.jsonl", [f"Name a {x}." for x in ("fruit", "color", "planet", "bird", "tree")])
    members = [{"name": f"smol-{i}", "model": SMOL, "sampling": {"temperature": 1.0, "max_tokens": 8, "seed": i}}
               for i in range(3)]
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({**TINY, "prompts": {"source": str(prompts)}, "generators": members,
                                      "models_per_prompt": 2}))
    out = tmp_path / "run"
    with using(pool=pool):
        assert main(["generate", str(recipe), "--out", str(out)]) == 0
    store = RunStore(out)
    got: dict[str, set[str]] = {}
    for key in store.keys("completions"):
        for c in store.read("completions", key, Completion):
            assert c.ok
            got.setdefault(c.prompt_id, set()).add(c.model)
    r = load_recipe(recipe)
    drawn = assign(load_prompts(str(prompts)), r.generators, 2, r.seed)
    assert got == {p.prompt_id: {n for n, ps in drawn.items() if p in ps} for p in load_prompts(str(prompts))}
    assert all(len(v) == 2 for v in got.values()) and len({frozenset(v) for v in got.values()}) > 1
    (_, generated) = json.loads((out / "summary.json").read_text())
    assert generated["count_out"] == 10  # 5 prompts x 2 members, not x 3


# ----------------------------------------------------------------------------- real endpoints that fail
class FailsOnMarkedPrompts:
    """An OpenAI-compatible chat endpoint's faults and answers. While broken it answers HTTP 503 to
    generation requests whose prompt holds FAIL, or (with `judge_fails`) to judge requests about such
    an answer. A judge request (it carries a response_format) gets a rating with log-probs: 5 for
    gen-a's answers, else 3."""

    broken, judge_fails = True, False
    seen: list[str] = []

    @classmethod
    def fault(cls, path, body):
        if body is None:
            return None
        text = asked(body)
        cls.seen.append(("judge: " if judging(body) else "") + text)
        return 503 if cls.broken and "FAIL" in text and judging(body) == cls.judge_fails else None

    @staticmethod
    def respond(body):
        text = asked(body)
        if judging(body):
            return verdict(5 if "from gen-a" in text else 3)
        return said(f"ok from {body['model']}: {text}")


@pytest.fixture
def endpoint():
    FailsOnMarkedPrompts.broken, FailsOnMarkedPrompts.judge_fails, FailsOnMarkedPrompts.seen = True, False, []
    with serving(FailsOnMarkedPrompts.respond, models=("gen-a", "gen-b", "served-judge"),
                 fault=FailsOnMarkedPrompts.fault) as srv:
        yield srv.base_url


def remote_recipe(tmp_path, url, retries, models=("gen-a",), **generator):
    write_prompts(tmp_path / "prompts.jsonl", ["Say hi.", "Say FAIL."])
    data = {**TINY, "prompts": {"source": str(tmp_path / "prompts.jsonl")},
            "generators": [{"name": m, "model": m, "sampling": {"max_tokens": 8}, **generator,
                            "endpoint": {"base_url": url, "max_retries": 0}} for m in models],
            "judge": {"name": "uf", "model": "served-judge", "aspects": ["helpfulness"],
                      "endpoint": {"base_url": url, "max_retries": 0}},
            "flow": {"retries": retries, "retry_delay_seconds": 0, "retry_jitter_factor": 0}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_recipe(path)


@flow
def until(recipe, out: str, stage: str, prompts=None):
    """The stages up to `stage`; with `prompts`, generation alone on those records."""
    from rlaif.flows.pipeline import run_stages

    with flow_run(recipe, out) as ctx:
        if prompts is None:
            return run_stages(ctx, stage).reports
        pm = write_prompt_chunks(prompts, RunStore(out), recipe.shard_size)
        manifest, report = run_step(generate_step(ctx, pm), ctx)
        return manifest, report.cached, report.seconds


def test_remote_rows_are_retried_by_prefect_with_backoff_then_kept(tmp_path, endpoint, prefect_harness):
    recipe = remote_recipe(tmp_path, endpoint, retries=2)
    out = str(tmp_path / "run")
    stages = by_stage(until(recipe, out, "generate"))
    seen = FailsOnMarkedPrompts.seen
    # three tries (1 + 2 Prefect retries); each retry re-sends only the failed row
    assert seen.count("Say FAIL.") == 3 and seen.count("Say hi.") == 1
    assert stages["generate"].notes["failed"] == 1 and stages["generate"].notes["retried next run"] == 1

    # the endpoint recovers: the next run is not served the cached failure; it re-sends that row only
    FailsOnMarkedPrompts.broken, FailsOnMarkedPrompts.seen = False, []
    stages = by_stage(until(recipe, out, "generate"))
    assert FailsOnMarkedPrompts.seen == ["Say FAIL."]
    assert stages["generate"].count_out == 2 and stages["generate"].notes["retried next run"] == 0
    assert by_stage(until(recipe, out, "generate"))["generate"].cached


def test_judge_rows_that_failed_with_503_are_sent_again_once_the_server_is_healthy(tmp_path, endpoint, prefect_harness):
    FailsOnMarkedPrompts.judge_fails = True  # generation succeeds; the judge fails on FAIL's answers
    recipe = remote_recipe(tmp_path, endpoint, retries=0, models=("gen-a", "gen-b"))
    out = str(tmp_path / "run")
    judge = by_stage(until(recipe, out, "judge"))["judge"]
    assert (judge.notes["parsed"], judge.notes["failed"]) == (2, 2)
    store = RunStore(out)
    (shard,) = store.keys("judgements/uf")
    assert store.info("judgements/uf", shard, Judgement).retryable == 2

    FailsOnMarkedPrompts.broken, FailsOnMarkedPrompts.seen = False, []
    stages = by_stage(until(recipe, out, "binarize"))
    assert stages["generate"].cached and not stages["judge"].cached
    sent = [x for x in FailsOnMarkedPrompts.seen if x.startswith("judge: ")]
    assert len(sent) == 2 and all("FAIL" in x for x in sent)  # only the failed rows, not the parsed ones
    assert stages["judge"].notes["parsed"] == 4 and stages["binarize"].count_out == 2
    FailsOnMarkedPrompts.seen = []
    assert by_stage(until(recipe, out, "judge"))["judge"].cached and FailsOnMarkedPrompts.seen == []


def test_a_stage_error_names_the_stage_model_and_row(tmp_path, endpoint, prefect_harness):
    recipe = remote_recipe(tmp_path, endpoint, retries=0, system_prompt="Be brief.")
    good = Prompt(prompt_id="fine", messages=[Message(role="user", content="Say hi.")])
    broken = Prompt(prompt_id="broken-row", messages=[])  # a record no prompt file would give
    with pytest.raises(StageError) as e:
        until(recipe, str(tmp_path / "run"), "generate", [good, broken])
    assert (e.value.stage, e.value.model, e.value.row) == ("generate", "gen-a", "broken-row")
    assert "stage 'generate', model gen-a, row broken-row: IndexError" in str(e.value)
