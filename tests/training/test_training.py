"""dSFT then dDPO with TRL on a written dataset (tiny 2-layer model) through `rlaif train` and
`rlaif evaluate` (metrics and win rate, and MT-Bench on the same trained models, loaded once);
resume, LoRA, QLoRA's CPU error, loss types, a precomputed reference, gradient checkpointing, a
hub-layout dataset, the stage's own state, recipes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.support.helpers import ROOT, SMOL, SMOL_SETTINGS, Recording
from rlaif.core.errors import ConfigError
from rlaif.recipe.spec import load_recipe
from rlaif.evaluation.mt_bench_data import load_mt_bench
from rlaif.training import common
from rlaif.training.dpo import DPOSpec, train_dpo
from rlaif.training.sft import SFTSpec, train_sft

FAST = dict(per_device_train_batch_size=2, max_length=64, warmup_steps=0, learning_rate=1e-3)


def write_dataset(path: Path, n_train: int = 6, n_test: int = 3) -> Path:
    """The dataset contract: train_prefs/test_prefs and train_sft/test_sft, conversational, as a
    version folder with a manifest that the run's `dataset` link points at."""
    from datasets import Dataset, DatasetDict

    def rows(lo: int, hi: int) -> list[dict]:
        out = []
        for i in range(lo, hi):
            prompt = [{"role": "user", "content": f"What is {i} plus {i}?"}]
            chosen = [{"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]
            rejected = [{"role": "assistant", "content": "I like turtles."}]
            out.append({"prompt": prompt, "chosen": chosen, "rejected": rejected, "messages": prompt + chosen,
                        "prompt_id": f"p{i}", "score_chosen": 4.5, "score_rejected": 1.5,
                        "chosen_model": "a", "rejected_model": "b", "judge": "j"})
        return out

    def sft(r: list[dict]) -> Dataset:
        return Dataset.from_list([{"prompt": x["prompt"], "completion": x["chosen"], "messages": x["messages"],
                                   "prompt_id": x["prompt_id"]} for x in r])

    train, test = rows(0, n_train), rows(100, 100 + n_test)
    version = path / "versions" / "0001"
    DatasetDict({"train_prefs": Dataset.from_list(train), "test_prefs": Dataset.from_list(test),
                 "train_sft": sft(train), "test_sft": sft(test)}).save_to_disk(str(version))
    (version / "manifest.json").write_text(json.dumps({"inputs_hash": f"written-{n_train}-{n_test}"}))
    (path / "dataset").symlink_to(version.relative_to(path))
    return path / "dataset"


def weights(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


def distance(a: dict, b: dict) -> float:
    return sum(float((a[k].float() - b[k].float()).abs().sum()) for k in a)


BETA = 0.01  # the Zephyr recipe's dDPO beta


@pytest.fixture(scope="module")
def sft_then_dpo(tmp_path_factory, tiny_model_dir, prefect_harness):
    """A run dir trained as the Zephyr chain trains it: `rlaif train sft` with a recipe that has no
    dDPO block (so the run's recipe.json has none, as after `rlaif run ... --set train.dpo=null`), then
    `rlaif train dpo` (from the dSFT output: train.dpo.model unset) with beta BETA from another recipe.
    dDPO's learning rate is tiny, so its weights are those it started from, give or take rounding.
    The recipes' judge and engine are the session's SmolLM2 (for evaluate). Returns the run and the
    two stages' state; tests read it, and write only under its eval/."""
    import yaml

    from rlaif.cli.main import main

    run = tmp_path_factory.mktemp("run")
    write_dataset(run)
    base = {"name": "trained", "generators": [{"name": "g", "model": SMOL}], "engine": SMOL_SETTINGS.model_dump(),
            "judges": [{"name": "uf-smollm2", "model": SMOL, "sampling": {"temperature": 0.0, "max_tokens": 48}}]}
    sft = {"model": tiny_model_dir, "max_steps": 3, **FAST}
    dpo = {"max_steps": 3, "beta": BETA, **{**FAST, "learning_rate": 1e-9}}
    for stage, train in (("sft", {"sft": sft}), ("dpo", {"sft": sft, "dpo": dpo})):
        recipe = run.parent / f"{run.name}-{stage}.yaml"
        recipe.write_text(yaml.safe_dump({**base, "train": train}))
        assert main(["train", stage, str(recipe), "--out", str(run)]) == 0
    return run, common.stage_state(run / "sft"), common.stage_state(run / "dpo")


@pytest.fixture(scope="module")
def trained_engines(sft_then_dpo):
    """The trained run's dSFT and dDPO models loaded once for this module, by path as `rlaif evaluate`
    names them (dDPO's start model, the run's dpo/); the `rlaif evaluate` and MT-Bench tests borrow
    them. Module scope: they are closed before any other module's test runs."""
    from rlaif.engines.vllm_offline import VLLMEngine

    run, _, dpo = sft_then_dpo
    paths = [dpo["start_model"], str(run / "dpo")]
    with VLLMEngine(paths[0], SMOL_SETTINGS, label=paths[0]) as sft, \
            VLLMEngine(paths[1], SMOL_SETTINGS, label=paths[1]) as ddpo:
        yield {paths[0]: sft, paths[1]: ddpo}


def test_sft_then_dpo_starts_from_the_sft_weights(sft_then_dpo, tiny_model_dir):
    run, sft, dpo = sft_then_dpo
    assert sft["metrics"]["steps"] == 3 and math.isfinite(sft["metrics"]["train_loss"])
    assert dpo["metrics"]["steps"] == 3 and math.isfinite(dpo["metrics"]["train_loss"])
    for stage in ("sft", "dpo"):
        assert (run / stage / "model.safetensors").exists() and (run / stage / "tokenizer_config.json").exists()
    base, tuned, ddpo = weights(Path(tiny_model_dir)), weights(run / "sft"), weights(run / "dpo")
    assert distance(ddpo, tuned) < 1e-3 * distance(tuned, base)  # dDPO's weights are dSFT's, not the base's
    history = json.loads((run / "dpo" / "trainer_state.json").read_text())["log_history"]
    assert any("rewards/margins" in h for h in history)


def test_dpo_without_sft_output_says_what_to_do(tmp_path):
    data = write_dataset(tmp_path)
    with pytest.raises(ConfigError, match="rlaif train sft"):
        train_dpo(data, DPOSpec(max_steps=1), tmp_path / "dpo")


def test_resume_continues_from_the_last_checkpoint(tmp_path, tiny_model_dir):
    data = write_dataset(tmp_path)
    spec = DPOSpec(model=tiny_model_dir, max_steps=2, save_steps=1, save_total_limit=None, loss_type="ipo", **FAST)
    first = train_dpo(data, spec, tmp_path / "dpo")
    assert first["steps"] == 2 and (tmp_path / "dpo" / "checkpoint-2").is_dir()
    # a sentinel in the checkpoint's saved state: only a run that resumed from it can report it
    state = tmp_path / "dpo" / "checkpoint-2" / "trainer_state.json"
    saved = json.loads(state.read_text())
    step2 = next(h for h in saved["log_history"] if h.get("step") == 2 and "loss" in h)
    step2["loss"] = 123.0
    state.write_text(json.dumps(saved))
    resumed = train_dpo(data, spec.model_copy(update={"max_steps": 3, "resume": True}), tmp_path / "dpo")
    assert resumed["steps"] == 3 and resumed["resumed_from"] == str(tmp_path / "dpo" / "checkpoint-2")
    history = json.loads((tmp_path / "dpo" / "trainer_state.json").read_text())["log_history"]
    losses = {h["step"]: h["loss"] for h in history if "loss" in h}
    assert sorted(losses) == [1, 2, 3] and losses[2] == 123.0  # steps 1-2 came from the checkpoint


def test_lora_trains_adapters_only_and_saves_a_merged_model(tmp_path, tiny_model_dir):
    data = write_dataset(tmp_path)
    lora = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
    full = train_sft(data, SFTSpec(model=tiny_model_dir, max_steps=1, **FAST), tmp_path / "full")
    adapted = train_sft(data, SFTSpec(model=tiny_model_dir, max_steps=1, lora=lora, **FAST), tmp_path / "lora")
    assert 0 < adapted["trainable_params"] < full["trainable_params"] / 20
    assert (tmp_path / "lora" / "adapter" / "adapter_config.json").exists()
    assert (tmp_path / "lora" / "model.safetensors").exists()  # merged: the next stage loads it plainly
    dpo = train_dpo(data, DPOSpec(model=str(tmp_path / "lora"), max_steps=1, lora=lora, **FAST), tmp_path / "dpo")
    assert dpo["steps"] == 1 and (tmp_path / "dpo" / "adapter" / "adapter_config.json").exists()


def test_qlora_without_a_gpu_fails_clearly(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setattr(common, "on_gpu", lambda: False)  # the CPU path, whatever this machine has
    data = write_dataset(tmp_path)
    spec = SFTSpec(model=tiny_model_dir, max_steps=1, lora={"load_in_4bit": True}, **FAST)
    with pytest.raises(ConfigError, match="load_in_4bit.*GPU"):
        train_sft(data, spec, tmp_path / "sft")


def test_a_field_trl_does_not_have_is_named(tmp_path, tiny_model_dir):
    data = write_dataset(tmp_path)
    with pytest.raises(ConfigError, match="train.sft.not_a_field: not a field of TRL's SFTConfig"):
        train_sft(data, SFTSpec(model=tiny_model_dir, not_a_field=1, **FAST), tmp_path / "sft")


def test_an_adapter_only_output_is_not_retrained_on_an_unchanged_rerun(tmp_path, tiny_model_dir, prefect_harness):
    """The stage's state is its marker, not model.safetensors: a QLoRA output has only its adapter."""
    import yaml

    from rlaif.flows.pipeline import train_flow

    write_dataset(tmp_path)
    lora = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
    recipe_path = tmp_path / "r.yaml"
    recipe_path.write_text(yaml.safe_dump({
        "name": "adapter", "generators": [{"name": "g", "model": "m"}], "judge": {"name": "j", "model": "m"},
        "train": {"dpo": {"model": tiny_model_dir, "max_steps": 1, "lora": lora, **FAST}}}))
    recipe = load_recipe(recipe_path)
    (first,) = train_flow(recipe, str(tmp_path), "dpo")
    assert not first.cached and first.count_out == 1
    (tmp_path / "dpo" / "model.safetensors").unlink()  # what a QLoRA output looks like: the adapter only
    stamp = (tmp_path / "dpo" / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns
    (again,) = train_flow(recipe, str(tmp_path), "dpo")
    assert again.cached and (tmp_path / "dpo" / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns == stamp
    (changed,) = train_flow(load_recipe(recipe_path, ["train.dpo.beta=0.2"]), str(tmp_path), "dpo")
    assert not changed.cached  # a changed setting trains again


def first_loss(out_dir: Path) -> float:
    history = json.loads((out_dir / "trainer_state.json").read_text())["log_history"]
    return next(h["loss"] for h in history if h.get("step") == 1 and "loss" in h)


@pytest.mark.parametrize("loss_type, weights, at_start", [
    ("sigmoid", None, math.log(2)),  # -log sigmoid(beta * 0)
    ("ipo", None, 25.0),  # (0 - 1 / (2 beta))^2 with beta 0.1
    (["sigmoid", "ipo"], [1.0, 0.5], math.log(2) + 12.5),  # a list combines them, weighted
])
def test_the_loss_type_is_the_one_trl_computes(tmp_path, tiny_model_dir, loss_type, weights, at_start):
    """The first step's loss, taken while the policy still equals its reference (every log-ratio 0),
    is the loss function's value at 0: it tells which loss TRL computed."""
    data = write_dataset(tmp_path)
    extra = {"loss_weights": weights} if weights else {}
    train_dpo(data, DPOSpec(model=tiny_model_dir, max_steps=1, beta=0.1, loss_type=loss_type, **extra, **FAST),
              tmp_path / "dpo")
    assert first_loss(tmp_path / "dpo") == pytest.approx(at_start, abs=2e-3)


def test_precomputed_reference_and_gradient_checkpointing(tmp_path, tiny_model_dir, monkeypatch):
    """precompute_ref_log_probs: the reference log-probs of train_prefs are computed once, before
    training; gradient_checkpointing: the model recomputes activations (non-reentrant by our default)."""
    from transformers import PreTrainedModel

    from rlaif.training.reference import StoredReferenceDPO  # TRL's DPOTrainer, its reference pass kept

    precomputed, checkpointed = [], []
    real_precompute = StoredReferenceDPO._precompute_ref_logps
    real_checkpointing = PreTrainedModel.gradient_checkpointing_enable

    def precompute(self, dataset, name, batch_size):  # spies: they record and call the real ones
        precomputed.append((name, len(dataset)))
        return real_precompute(self, dataset, name, batch_size)

    def checkpointing(self, *args, **kwargs):
        checkpointed.append(kwargs.get("gradient_checkpointing_kwargs"))
        return real_checkpointing(self, *args, **kwargs)

    monkeypatch.setattr(StoredReferenceDPO, "_precompute_ref_logps", precompute)
    monkeypatch.setattr(PreTrainedModel, "gradient_checkpointing_enable", checkpointing)
    data = write_dataset(tmp_path)
    spec = DPOSpec(model=tiny_model_dir, max_steps=2, precompute_ref_log_probs=True, gradient_checkpointing=True, **FAST)
    result = train_dpo(data, spec, tmp_path / "dpo")
    assert result["steps"] == 2 and precomputed == [("train", 6)] and result["reference_computed"] == 1
    assert checkpointed == [{"use_reentrant": False}]
    assert first_loss(tmp_path / "dpo") == pytest.approx(math.log(2), abs=2e-3)  # the reference: the start


def test_dsft_on_a_hub_dataset_through_a_local_stand_in(tmp_path, tiny_model_dir):
    """`dataset: hf:<id>` goes through datasets.load_dataset, as for a Hub repo; the stand-in is a
    folder laid out as HuggingFaceH4/ultrachat_200k is on the Hub (data/<split>-00000-of-00001.parquet,
    whole `messages` conversations). The run has no dataset of its own: only the stand-in is read."""
    from datasets import Dataset

    hub = tmp_path / "ultrachat_200k"
    (hub / "data").mkdir(parents=True)
    chats = [[{"role": "user", "content": f"Count to {i}."}, {"role": "assistant", "content": " ".join(map(str, range(i)))}]
             for i in range(2, 6)]
    Dataset.from_list([{"prompt": c[0]["content"], "prompt_id": str(i), "messages": c} for i, c in enumerate(chats)]
                      ).to_parquet(str(hub / "data" / "train_sft-00000-of-00001.parquet"))
    spec = SFTSpec(model=tiny_model_dir, dataset=f"hf:{hub}", num_train_epochs=1, **FAST)
    metrics = train_sft(tmp_path / "no-dataset-here", spec, tmp_path / "sft")
    assert metrics["steps"] == 2  # 4 conversations, 2 per step, one epoch


@pytest.mark.parametrize("stage", ["sft", "dpo"])
def test_zephyr_recipes_load(stage):
    recipe = load_recipe(ROOT / "recipes" / "zephyr-7b-beta" / f"{stage}.yaml")
    spec = getattr(recipe.train, stage)
    assert spec is not None and spec.get("gradient_checkpointing")
    assert not spec.resume  # a cut-short run of the same inputs resumes without it; other inputs never do
    if stage == "dpo":
        assert spec.model is None and spec.get("learning_rate") == 5e-7 and spec.get("beta") == 0.01
    else:
        assert spec.model == "mistralai/Mistral-7B-v0.1" and spec.get("learning_rate") == 2e-5


def test_rlaif_evaluate_writes_metrics_win_rate_and_plots(sft_then_dpo, trained_engines, pool, capsys, monkeypatch):
    """`rlaif evaluate`: real vLLM engines, both tiny models answer the test prompts, the run's judge
    compares. The log-probs' HF models are gone, and their memory handed back, before it asks for an
    engine; beta is the one dDPO trained with, not recipe.json's (which has no dDPO block)."""
    import weakref

    from transformers import AutoModelForCausalLM

    from rlaif.engines import pool as engine_pool
    from rlaif.engines.pool import EngineSpec
    from rlaif.cli.main import main
    from rlaif.runners.context import using

    run, _, dpo = sft_then_dpo
    assert dpo["beta"] == BETA and json.loads((run / "recipe.json").read_text())["train"]["dpo"] is None
    events, hf_models = [], []
    load_hf, hand_off, get = AutoModelForCausalLM.from_pretrained, engine_pool.free_accelerator, pool.get

    def spy_load(*args, **kwargs):  # spies: they record and call the real ones
        hf_models.append(weakref.ref(model := load_hf(*args, **kwargs)))
        events.append("hf model")
        return model

    def spy_hand_off(*args, **kwargs):
        events.append("hand-off")
        return hand_off(*args, **kwargs)

    def spy_get(*args, **kwargs):
        if "engine" not in events:
            assert [r() for r in hf_models] == [None, None], "an HF model is alive as the first engine is asked for"
        events.append("engine")
        return get(*args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", spy_load)
    monkeypatch.setattr(engine_pool, "free_accelerator", spy_hand_off)
    monkeypatch.setattr(pool, "get", spy_get)
    for path, engine in trained_engines.items():  # this module's: loaded once for evaluate and MT-Bench
        pool.put(EngineSpec(path, None, SMOL_SETTINGS), engine)
    with using(pool=pool):  # the judge is the session's SmolLM2
        assert main(["evaluate", str(run), "--max-tokens", "12"]) == 0
    assert events[:4] == ["hf model", "hf model", "hand-off", "engine"]
    assert pool.loads == {}  # both models were found under the paths the run's stage state names
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert f"written to {run / 'eval'}" in capsys.readouterr().err
    assert metrics["pairs"] == 3 and metrics["beta"] == BETA and metrics["sft_model"] == str(run / "sft")
    reward = metrics["dpo_implicit_reward"]
    assert 0 <= reward["accuracy"] <= 1 and math.isfinite(reward["margin"])
    assert reward["margin"] == pytest.approx(reward["chosen"] - reward["rejected"])
    # the implicit-reward margin is beta times the change of the mean log-ratio from dSFT to dDPO
    assert reward["margin"] == pytest.approx(metrics["beta"] * metrics["gain"]["margin"], rel=1e-4, abs=1e-6)
    assert set(metrics["preference"]) == {"dsft", "ddpo"}
    plots = {Path(p).name for p in metrics["plots"]}
    assert {"dpo_loss.png", "dpo_rewards_chosen.png", "dpo_rewards_margins.png", "sft_loss.png"} <= plots
    assert all(Path(p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in metrics["plots"])
    assert metrics["dsft_implicit_reward"]["accuracy"] == 0.5  # its own reference: every pair a tie
    win = metrics["win_rate"]
    assert win["judge"] == "uf-smollm2" and win["prompts"] == 3 and win["pairs"] == 3
    assert win["judged"] >= 1 and win["judged"] + win["unjudged"] == 3  # answers were judged, not skipped
    assert win["ddpo_wins"] + win["dsft_wins"] + win["ties"] == win["judged"] and 0 <= win["ddpo_win_rate"] <= 1
    assert list((run / "eval" / "completions").glob("shard-*.jsonl"))


def test_rlaif_evaluate_mt_bench_on_a_run(tmp_path, smol_engine, sft_then_dpo, trained_engines):
    """`rlaif evaluate RUN --mt-bench --limit 8`: base (bundled SmolLM2, the session's engine, also the
    judge), dSFT and dDPO (this module's trained tiny models, given by `--model`: the run's own are
    found by test_models_of_a_run_and_given_models) answer both turns; table, radar, shards; a rerun
    asks nothing."""
    from rlaif.engines.pool import EnginePool, EngineSpec
    from rlaif.cli.main import main
    from rlaif.runners.context import using

    run = tmp_path / "run"
    recipe = load_recipe(ROOT / "recipes" / "quickstart.yaml", [
        f"engine.max_model_len={SMOL_SETTINGS.max_model_len}", f"engine.cpu_kv_cache_gb={SMOL_SETTINGS.cpu_kv_cache_gb}",
        "judges.0.explanation_chars=24"])
    run.mkdir()
    (run / "recipe.json").write_text(recipe.model_dump_json())
    sft, dpo = trained_engines
    models = ["--model", f"base={SMOL}", "--model", f"dsft={sft}", "--model", f"ddpo={dpo}"]
    tap = Recording(smol_engine)
    with EnginePool() as pool, using(pool=pool):
        pool.put(EngineSpec(SMOL, None, SMOL_SETTINGS), tap)
        for path, engine in trained_engines.items():
            pool.put(EngineSpec(path, None, SMOL_SETTINGS), engine)
        assert main(["evaluate", str(run), "--mt-bench", "--limit", "8", "--max-tokens", "8", *models]) == 0
        loads = dict(pool.loads)
        assert loads == {}  # every model was loaded already, found under the recipe's engine settings

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
