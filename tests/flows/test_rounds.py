"""On-policy rounds (flows/rounds.py): the quickstart's models through 3 rounds on a few prompts,
one training step each, MT-Bench (one question, short answers) in each round's measurement, killed
for real between rounds 2 and 3; the rerun finishes round 3 with nothing of rounds 1 and 2 made
again, and a rerun of the finished series computes nothing.

The recipe's checks and the prompt draw are light tests below it.
"""

from __future__ import annotations

import json
import os
import signal

import pytest
import yaml

from rlaif.cli.main import main
from rlaif.core.errors import ConfigError
from rlaif.core.progress import NULL
from rlaif.core.records import Message, Prompt
from rlaif.recipe.spec import RecipeError, load_recipe
from rlaif.runners.context import using
from tests.support.faulty import prefect_env, rlaif, stamps, wait_for
from tests.support.helpers import ROOT, SMOL, SMOL_SETTINGS

QUICKSTART = ROOT / "recipes" / "quickstart.yaml"
# the quickstart, small: 3 prompts a round, 2 held out, 2 policy samples, short answers, one judged
# aspect, one training step per stage; both members on SmolLM2 (one load for generating and judging),
# the engine settings of the session's SmolLM2 engine (which the in-process rerun borrows)
SMALL = ["prompts.limit=3", "generators.0.sampling.max_tokens=24", "generators.1.model=smollm2-135m-instruct",
         "generators.1.format=chat", "generators.1.sampling.max_tokens=24", "generators.1.sampling.seed=1", "judges.0.aspects=[helpfulness]",
         "binarize.test_fraction=0.34", "train.sft.max_steps=1", "train.sft.max_length=96",
         "train.dpo.max_steps=1", "train.dpo.max_length=96", "train.dpo.learning_rate=1.0e-3",
         "rounds.count=3", "rounds.held_out=2", "rounds.samples=2", "rounds.mt_bench={questions: 1, max_tokens: 24}",
         f"engine={json.dumps(SMOL_SETTINGS.model_dump(exclude_defaults=True))}"]


def settings() -> list[str]:
    return [a for s in SMALL for a in ("--set", s)]


def made(out) -> dict:
    """Every file a stage made (shards, versions, models, measurements), by inode and mtime."""
    found = {}
    for pattern in ("**/shard-*", "**/versions/*/**/*", "**/sft/*", "**/dpo/*", "rounds/eval/*", "**/ref_logps/*"):
        found |= stamps(out, pattern)
    return found


def engine_key(model) -> str:
    from rlaif.engines.base import EngineSettings
    from rlaif.engines.pool import EngineSpec

    return EngineSpec(str(model), None, EngineSettings().over(SMOL_SETTINGS)).key


def test_three_rounds_killed_between_rounds_resume_with_nothing_redone(tmp_path, pool, prefect_harness):
    out = tmp_path / "run"
    cmd = ["run", str(QUICKSTART), "--out", str(out), *settings()]

    # rounds 1 and 2 in a process of their own, killed (SIGKILL, its whole group) once round 2's model is marked trained
    proc = rlaif(*cmd, env=prefect_env(tmp_path), wait=False)
    wait_for(lambda: (out / "rounds" / "2" / "dpo" / "rlaif-stage.json").exists(), proc, timeout=1200, step=0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "rounds" / "3" / "dpo").exists()
    before = made(out)
    assert (out / "rounds" / "eval" / "round-1.json").exists()  # round 1 was measured while round 2 ran

    # the rerun (here, borrowing the session's SmolLM2 for the judge) goes on at round 2's held-out answers
    with using(pool=pool):
        assert main(cmd) == 0
    after = made(out)
    assert {k: after[k] for k in before} == before  # nothing of rounds 1 and 2 made again
    # round 2's model answered the held-out prompts, MT-Bench and round 3's on one load, round 3's the
    # held-out ones and MT-Bench; the judge (the session's SmolLM2, borrowed until round 2's measurement
    # handed the machine to the HF models) once more for round 3's held-out answers and MT-Bench; no model
    # of rounds 1 and 2 again
    assert pool.loads == {engine_key(out / "rounds" / "2" / "dpo"): 1, engine_key(out / "rounds" / "3" / "dpo"): 1,
                          engine_key(SMOL): 1}

    # each round a dataset version and a model; round k's policy is round k-1's model, its reference dSFT's
    for k, folder in ((1, out), (2, out / "rounds" / "2"), (3, out / "rounds" / "3")):
        assert (folder / "dataset").resolve().name == "0001" and (folder / "dpo" / "model.safetensors").exists()
        if k > 1:
            state = json.loads((folder / "dpo" / "rlaif-stage.json").read_text())
            previous = out / "dpo" if k == 2 else out / "rounds" / str(k - 1) / "dpo"
            assert state["start_model"] == str(previous) and state["ref_model"] == str(out / "sft")
            recipe = json.loads((folder / "recipe.json").read_text())
            trained = json.loads((previous / "rlaif-stage.json").read_text())["inputs"]
            assert [(g["name"], g["model"], g["revision"]) for g in recipe["generators"]] == [
                ("policy-1", str(previous), trained), ("policy-2", str(previous), trained)]
            rows = json.loads((folder / "dataset" / "manifest.json").read_text())
            assert rows["binarize"]["strategy"] == "best_vs_worst_samples"
            assert "**Policy**: an on-policy round" in (folder / "dataset" / "README.md").read_text()
            pairs = (folder / "dataset" / "train_prefs")
            assert pairs.exists()

    # the table: one row per round, and the plot
    summary = json.loads((out / "rounds" / "summary.json").read_text())
    rows = summary["rows"]
    assert [r["round"] for r in rows] == [1, 2, 3]
    assert rows[0]["win vs round 1"] is None and rows[1]["win vs round 1"] == rows[1]["win vs previous"]
    for r in rows:
        assert 0 <= r["win vs dSFT"] <= 1 and 0 <= r["win vs previous"] <= 1
        assert r["answer tokens"] > 0 and r["judge score"] is not None and r["steps"] == 1
        assert r["reward acc"] is None or 0 <= r["reward acc"] <= 1
    assert summary["dsft"]["prompts"] == 2 and (out / "rounds" / "rounds.png").stat().st_size > 0
    assert "| round | win vs previous |" in (out / "rounds" / "rounds.md").read_text()

    # MT-Bench in every round's measurement, the dSFT model's beside round 1's, graded by the measurements' judge
    for r, m in zip(rows, summary["rounds"]):
        assert m["mt_bench"]["judge"] == "uf-smollm2" and m["mt_bench"]["questions"] == 1
        assert m["mt_bench"]["turns"] == 2 and 1 <= r["mt-bench"] <= 10 and r["mt-bench"] == m["mt_bench"]["score"]
    assert 1 <= summary["dsft"]["mt_bench"]["score"] <= 10
    assert "| steps | mt-bench |" in (out / "rounds" / "rounds.md").read_text()
    scores = json.loads((out / "rounds" / "mt_bench" / "scores.uf-smollm2.json").read_text())
    assert list(scores["models"]) == ["dsft", "round-1", "round-2", "round-3"]
    assert scores["models"]["round-3"]["model"] == str(out / "rounds" / "3" / "dpo")

    # an unchanged rerun of the finished series: nothing computed, no engine loaded
    loads = dict(pool.loads)
    with using(pool=pool):
        assert main(cmd) == 0
    assert pool.loads == loads and made(out) == after
    stages = json.loads((out / "summary.json").read_text())
    assert all(s["cached"] for s in stages if not s["stage"].endswith("prompts") and s["stage"] != "rounds")


# ----------------------------------------------------------------------------- light: the recipe and the draw
@pytest.mark.parametrize("sets, says", [
    (["rounds.count=3", "train.dpo=null"], "give a train.dpo block"),
    (["rounds.count=2", "rounds.strategy=policy_vs_ensemble"], "set ensemble: true"),
    (["rounds.count=2", "rounds.samples=1"], "samples must be at least 2"),
    (["rounds.count=2", "judges.0.model=policy", "judges.1.model=policy"], "add a fixed judge"),
    (["judges.0.model=policy"], "it needs rounds:"),
    (["rounds.count=2", "rounds.judge=nope"], "rounds.judge 'nope' is not one of the judges"),
    (["rounds.count=2", "rounds.ensemble=true", "generators.0.name=policy-1"], "rename it"),
    (["binarize.strategy=best_vs_worst_samples"], "set it as rounds.strategy"),
    (["rounds.mt_bench=8"], "it needs rounds.count above 1"),
    (["rounds.count=2", "rounds.mt_bench.judge=nope"], "rounds.mt_bench.judge 'nope' is not one of the judges"),
    (["rounds.count=2", "rounds.mt_bench.questions=81"], "less than or equal to 80"),
    (["rounds.count=2", "rounds.mt_bench=1", "judges.0={name: rm, kind: reward_model, model: smollm2-135m-instruct}"],
     "judge 'rm' is a reward_model; MT-Bench needs a judge that writes text"),
])
def test_a_recipe_with_rounds_that_cannot_work_is_one_line_before_compute(sets, says):
    with pytest.raises(RecipeError, match="quickstart.yaml") as e:
        load_recipe(QUICKSTART, sets)
    assert says in str(e.value) and len(str(e.value).splitlines()) == 1


def test_rounds_one_is_a_plain_run_and_a_count_alone_is_the_block():
    plain, three = load_recipe(QUICKSTART), load_recipe(QUICKSTART, ["rounds=3"])
    assert "rounds" not in json.loads(plain.model_dump_json())  # a plain run's recipe.json as before
    assert three.rounds.count == 3 and three.rounds.on and not plain.rounds.on


def test_mt_bench_of_the_rounds_is_a_count_true_or_a_block_and_unset_dumps_as_before():
    three = load_recipe(QUICKSTART, ["rounds.count=3"])
    assert "mt_bench" not in json.loads(three.model_dump_json())["rounds"]  # recipe.json and its hash as before
    for off in ("0", "false"):
        assert load_recipe(QUICKSTART, ["rounds.count=3", f"rounds.mt_bench={off}"]) == three
    one = load_recipe(QUICKSTART, ["rounds.count=3", "rounds.mt_bench=1"]).rounds.mt_bench
    assert (one.questions, one.judge, one.max_tokens) == (1, None, 1024)
    assert load_recipe(QUICKSTART, ["rounds.count=3", "rounds.mt_bench=true"]).rounds.mt_bench.questions == 80
    block = load_recipe(QUICKSTART, ["rounds.count=3", "rounds.mt_bench={questions: 8, judge: pairwise-smollm2}"])
    from rlaif.recipe.rounds import mt_bench_judge

    assert mt_bench_judge(block).name == "pairwise-smollm2" and mt_bench_judge(
        load_recipe(QUICKSTART, ["rounds.count=3", "rounds.mt_bench=1"])).name == "uf-smollm2"
    dumped = json.dumps(block.rounds.mt_bench.model_dump())
    again = load_recipe(QUICKSTART, ["rounds.count=3", f"rounds.mt_bench={dumped}"])
    assert again == block  # what recipe.json holds reads back as the same block


def test_the_rounds_table_has_mt_bench_only_when_measured(tmp_path):
    from rlaif.evaluation.rounds_report import write_report

    def measured(k, *mt):  # mt: its MT-Bench score (None: none graded), or nothing: not asked
        m = {"round": k, "model": f"r{k}", "wins": {"dsft": {"rate": 0.5}}, "judge_score": 3.0, "answer_tokens": 20.0,
             "reward": {"accuracy": 1.0, "pairs": 1}, "pairs": 2, "steps": 1}
        return {**m, "mt_bench": {"score": mt[0], "questions": 1, "judge": "uf-smollm2"}} if mt else m

    dsft = {"prompts": 2, "judge_score": 2.5, "answer_tokens": 18.0}
    plain = write_report(tmp_path / "plain", [measured(1), measured(2)], dsft)
    assert all("mt-bench" not in r for r in plain["rows"])
    assert "mt-bench" not in (tmp_path / "plain" / "rounds.md").read_text()
    mt = write_report(tmp_path / "mt", [measured(1, 4.5), measured(2, None)],
                      {**dsft, "mt_bench": {"score": 3.0, "questions": 1, "judge": "uf-smollm2"}})
    assert [r["mt-bench"] for r in mt["rows"]] == [4.5, None]
    table = (tmp_path / "mt" / "rounds.md").read_text()
    assert "| steps | mt-bench |" in table and "| 1 | 4.5 |" in table and "| 1 | - |" in table
    assert "MT-Bench 3 (1 questions, judge uf-smollm2)" in table
    assert (tmp_path / "mt" / "rounds.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    from rlaif.cli.summary import print_rounds

    (tmp_path / "mt" / "rounds").mkdir()
    (tmp_path / "mt" / "rounds" / "summary.json").write_text((tmp_path / "mt" / "summary.json").read_text())
    print_rounds(str(tmp_path / "mt"))  # the CLI's table reads the same rows


def test_the_draw_keeps_held_out_prompts_out_of_every_round(tmp_path):
    from rlaif.flows.rounds import draw_prompts

    recipe = load_recipe(QUICKSTART, ["prompts.limit=4", "rounds.count=3", "rounds.held_out=4", "hygiene.near_dup_threshold=null"])
    draw = draw_prompts(recipe, str(tmp_path), NULL)
    first, held = [p.prompt_id for p in draw.first], [p.prompt_id for p in draw.held_out]
    later = [p.prompt_id for k in (2, 3) for p in draw.prompts(k)]
    assert first == ["starter-1", "starter-2", "starter-3", "starter-4"] and len(held) == 4 and len(later) == 8
    assert len(set(first + held + later)) == 16  # disjoint
    assert [p.prompt_id for p in draw_prompts(recipe, str(tmp_path), NULL).held_out] == held  # the same each run
    same = draw_prompts(load_recipe(QUICKSTART, ["prompts.limit=4", "rounds.count=3", "rounds.prompts=same",
                                                 "hygiene.near_dup_threshold=null"]), str(tmp_path), NULL)
    assert [p.prompt_id for p in same.prompts(3)] == first
    with pytest.raises(ConfigError, match="rounds: 'starter' has 40 prompts after hygiene; round 1 takes 24"):
        draw_prompts(load_recipe(QUICKSTART, ["rounds.count=3", "hygiene.near_dup_threshold=null"]), str(tmp_path), NULL)


def test_a_rounds_recipe_self_rewarding_beside_the_ensemble(tmp_path):
    from rlaif.flows.rounds import round_recipe

    recipe = load_recipe(QUICKSTART, ["rounds.count=3", "rounds.ensemble=true", "rounds.strategy=policy_vs_ensemble",
                                      "rounds.reference=previous", "rounds.samples=3", "judges.1.model=policy",
                                      "binarize.judge=pairwise-smollm2"])
    first = round_recipe(recipe, tmp_path, 1)
    assert first.judges[1].model == "smollm2-135m-instruct"  # round 1's policy: the student
    second = round_recipe(recipe, tmp_path, 2)
    policy = str(tmp_path / "dpo")
    assert [(g.name, g.model, g.sampling.seed) for g in second.generators] == [
        ("policy-1", policy, 0), ("policy-2", policy, 1), ("policy-3", policy, 2),
        ("smollm2-135m", "smollm2-135m-instruct", 0), ("gemma3-270m", "gemma3-270m", 0)]
    assert second.judges[0].model == "smollm2-135m-instruct" and second.judges[1].model == policy
    assert second.binarize.strategy == "policy_vs_ensemble" and second.binarize.policy == ["policy-1", "policy-2", "policy-3"]
    assert second.train.sft is None and second.train.dpo.model == policy and second.train.dpo.ref_model is None
    third = round_recipe(load_recipe(QUICKSTART, ["rounds.count=3"]), tmp_path, 3)
    assert third.train.dpo.model == str(tmp_path / "rounds" / "2" / "dpo")
    assert third.train.dpo.ref_model == str(tmp_path / "sft") and third.name == "quickstart-round3"


# ----------------------------------------------------------------------------- scheduled refreshes as rounds
TEXTS = ["Name a fruit that is red.", "What is 2 + 2?", "Give a synonym for quick.", "Name a large ocean.",
         "Say hello in French.", "What colour is the sky?", "Name a farm animal.", "What is the opposite of hot?"]


def test_scheduled_refreshes_run_one_round_per_batch_of_new_prompts(tmp_path, pool, prefect_harness, capsys):
    """`rlaif refresh` of a series with `rounds.prompts: new` (what a deployment's scheduled run
    calls): the first refresh is round 1 on the prompts there are, the next
    one with new prompts is round 2 on exactly those, with round 1 found done; one without new
    prompts computes nothing, and one past `count` keeps its prompts for a larger count."""
    from tests.support.helpers import write_prompts

    source, out = tmp_path / "prompts.jsonl", tmp_path / "run"
    write_prompts(source, TEXTS[:4])
    sets = [a for s in SMALL if not s.startswith(("prompts.limit", "rounds."))
            for a in ("--set", s)] + ["--set", f"prompts.source={source}", "--set", "rounds.count=2",
                                      "--set", "rounds.prompts=new", "--set", "rounds.held_out=0",
                                      "--set", "rounds.samples=2"]
    cmd = ["refresh", str(QUICKSTART), "--out", str(out), *sets]

    with using(pool=pool):
        assert main(cmd) == 0  # round 1 on the 4 prompts (no held-out ones: the draw from the first batch is a light test below)
    said = lambda: "".join(capsys.readouterr())  # noqa: E731 (the closing lines go to stderr, TRL's logs to stdout)
    assert "round 1 of 2: version 0001 written" in said()
    assert not (out / "rounds" / "2").exists() and (out / "dpo" / "rlaif-stage.json").exists()
    assert (out / "rounds" / "eval" / "round-1.json").exists()
    round1 = made(out)

    write_prompts(source, TEXTS[:7])  # 3 new prompts: round 2's
    with using(pool=pool):
        assert main(cmd) == 0
    assert "3 new prompts; round 2 of 2: version 0001 written" in said()
    after = made(out)
    assert {k: after[k] for k in round1} == round1  # round 1 found done
    recipe = json.loads((out / "rounds" / "2" / "recipe.json").read_text())
    assert recipe["generators"][0]["model"] == str(out / "dpo")
    asked = {json.loads(line)["messages"][-1]["content"] for p in (out / "rounds" / "2" / "prompts").glob("shard-*.jsonl")
             for line in p.read_text().splitlines()}
    assert asked == set(TEXTS[4:7])
    assert (out / "rounds" / "2" / "dpo" / "model.safetensors").exists()
    rows = json.loads((out / "rounds" / "summary.json").read_text())["rows"]
    assert [r["round"] for r in rows] == [1, 2]

    loads = dict(pool.loads)
    with using(pool=pool):
        assert main(cmd) == 0  # nothing new: nothing computed, no model loaded
    assert "0 new prompts; round 2 of 2: version 0001 unchanged" in said()
    assert made(out) == after and pool.loads == loads

    write_prompts(source, TEXTS)  # past the series' 2 rounds: kept as a batch, nothing computed
    with using(pool=pool):
        assert main(cmd) == 0
    assert "the series has its 2 rounds; 1 batch(es) of new prompts wait" in said()
    assert {k: v for k, v in made(out).items() if not k.startswith("refresh/shard-0003")} == after
    assert (out / "refresh" / "shard-0003.jsonl").exists()


def test_a_scheduled_series_of_rounds_is_only_refreshed_and_a_refreshed_one_takes_new_prompts(tmp_path, capsys):
    new = ["--set", "rounds.count=2", "--set", "rounds.prompts=new"]
    assert main(["run", str(QUICKSTART), "--out", str(tmp_path / "a"), *new]) == 2
    assert f"error: {QUICKSTART}: rounds.prompts: new takes each round's prompts from a scheduled refresh" \
           in capsys.readouterr().err
    assert main(["refresh", str(QUICKSTART), "--out", str(tmp_path / "b"), "--set", "rounds.count=2"]) == 2
    assert f"error: {QUICKSTART}: a scheduled refresh of a series of rounds runs one round per batch" \
           in capsys.readouterr().err
    with pytest.raises(RecipeError, match="drop per_round"):
        load_recipe(QUICKSTART, ["rounds.count=2", "rounds.prompts=new", "rounds.per_round=4"])
    from rlaif.flows.deploy import deploy

    with pytest.raises(RecipeError, match="set rounds.prompts: new"):
        deploy(QUICKSTART, "0 3 * * *", overrides=["rounds.count=2"])
    assert not (tmp_path / "a" / "completions").exists() and not (tmp_path / "b" / "completions").exists()


def test_a_scheduled_series_draws_its_held_out_prompts_from_the_first_batch():
    from rlaif.flows.rounds import batch_draw
    from rlaif.prompts.hygiene import HygieneReport

    recipe = load_recipe(QUICKSTART, ["rounds.count=3", "rounds.prompts=new", "rounds.held_out=2"])
    batch = lambda *ids: [Prompt(prompt_id=i, messages=[Message(role="user", content=f"prompt {i}")])  # noqa: E731
                          for i in ids]
    batches = [batch("a", "b", "c", "d"), batch("e", "f"), batch("g"), batch("h")]
    draw = batch_draw(recipe, batches, HygieneReport(), 8)
    held = [p.prompt_id for p in draw.held_out]
    assert len(held) == 2 and sorted(held + [p.prompt_id for p in draw.first]) == ["a", "b", "c", "d"]
    assert {k: [p.prompt_id for p in ps] for k, ps in draw.rounds.items()} == {2: ["e", "f"], 3: ["g"]}  # up to count
    assert [p.prompt_id for p in batch_draw(recipe, batches[:1], HygieneReport(), 4).held_out] == held  # the same draw
    assert batch_draw(recipe, batches[:1], HygieneReport(), 4).rounds == {}
    with pytest.raises(ConfigError, match="found 2 prompts in 'starter' and held_out takes 2, leaving none for round 1"):
        batch_draw(recipe, [batch("a", "b")], HygieneReport(), 2)


def test_the_rehearsal_sizes_the_zephyr_rounds_for_a_cpu(tmp_path):
    """recipes/zephyr-7b-beta/rounds.yaml under `rlaif rehearse`'s overrides: a few prompts a round, two
    held out, two samples of short answers, the policy's engine on the CPU; the rows the rehearsal cuts
    the dataset to suffice for the draw; `model: policy` is no hub model to swap; a `rounds: 3` recipe
    takes the same overrides."""
    from rlaif.cli.rehearse import plan_for
    from rlaif.flows.rounds import draw_prompts, round_recipe
    from rlaif.rehearsal.hub_cache import PROMPTS
    from rlaif.rehearsal.overrides import cpu_overrides, rounds_prompts

    path = ROOT / "recipes" / "zephyr-7b-beta" / "rounds.yaml"
    recipe = load_recipe(path)
    assert recipe.rounds.count == 3 and recipe.rounds.reference == "sft" and recipe.rounds.engine.replicas == "auto"
    sets, _ = cpu_overrides(recipe, 4, None, {"data", "dpo"})
    small = load_recipe(path, sets)
    r = small.rounds
    assert (r.count, r.per_round, r.held_out, r.samples, r.sampling.max_tokens) == (3, 4, 2, 2, 24)
    assert small.prompts.limit == 4 and small.train.dpo.max_steps == 1
    second = round_recipe(small, tmp_path, 2)
    engine = second.generators[0].engine.over(second.engine)  # the policy's own block over the recipe's
    assert (engine.dtype, engine.cpu_kv_cache_gb, engine.replicas) == ("float32", 1, "auto")

    rows = tmp_path / "rows.jsonl"  # the source as the rehearsal cuts it
    rows.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS[:rounds_prompts(small, 4)]))
    draw = draw_prompts(load_recipe(path, [*sets, f"prompts.source={rows}"]), str(tmp_path / "run"), NULL)
    assert [len(draw.first), len(draw.held_out), *(len(draw.prompts(k)) for k in (2, 3))] == [4, 2, 4, 4]

    data = yaml.safe_load(path.read_text())  # the block as `rounds: 3`, and a self-rewarding judge beside
    data.update(rounds=3, judges=[*data["judges"], {"name": "self", "kind": "ultrafeedback", "model": "policy"}])
    (tmp_path / "three.yaml").write_text(yaml.safe_dump(data))
    three = load_recipe(tmp_path / "three.yaml")
    assert load_recipe(tmp_path / "three.yaml", cpu_overrides(three, 4, None, {"data"})[0]).rounds.held_out == 2
    mt = load_recipe(path, ["rounds.mt_bench=80"])  # MT-Bench each round: one question, short answers
    m = load_recipe(path, ["rounds.mt_bench=80", *cpu_overrides(mt, 4, None, {"data"})[0]]).rounds.mt_bench
    assert (m.questions, m.max_tokens) == (1, 24)
    plan = plan_for([three])
    assert "policy" not in plan.models and "alignment-handbook/zephyr-7b-sft-full" in plan.models
