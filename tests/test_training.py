"""dSFT then dDPO with TRL on a written dataset (tiny 2-layer model), resume, LoRA, the stage's own
state, recipes, evaluate."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from conftest import ROOT, SMOL_SETTINGS
from rlaif.core.errors import ConfigError
from rlaif.flows.recipe import load_recipe
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


@pytest.fixture(scope="module")
def sft_then_dpo(tmp_path_factory, tiny_model_dir):
    """A run dir with dSFT then dDPO (from the dSFT output, model: unset) trained on it. dDPO's
    learning rate is tiny, so its weights are those it started from, give or take rounding."""
    run = tmp_path_factory.mktemp("run")
    data = write_dataset(run)
    sft = train_sft(data, SFTSpec(model=tiny_model_dir, max_steps=3, **FAST), run / "sft")
    dpo = train_dpo(data, DPOSpec(max_steps=3, beta=0.1, **{**FAST, "learning_rate": 1e-9}), run / "dpo")
    common.mark_trained(run / "dpo", "test", dpo, start_model=dpo["start_model"])
    return run, sft, dpo


def test_sft_then_dpo_starts_from_the_sft_weights(sft_then_dpo, tiny_model_dir):
    run, sft, dpo = sft_then_dpo
    assert sft["steps"] == 3 and math.isfinite(sft["train_loss"])
    assert dpo["steps"] == 3 and math.isfinite(dpo["train_loss"]) and dpo["start_model"] == str(run / "sft")
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


@pytest.mark.parametrize("stage", ["sft", "dpo"])
def test_zephyr_recipes_load(stage):
    recipe = load_recipe(ROOT / "recipes" / "zephyr-7b-beta" / f"{stage}.yaml")
    spec = getattr(recipe.train, stage)
    assert spec is not None and spec.get("gradient_checkpointing")
    if stage == "dpo":
        assert spec.model is None and spec.get("learning_rate") == 5e-7 and spec.get("beta") == 0.01
    else:
        assert spec.model == "mistralai/Mistral-7B-v0.1" and spec.get("learning_rate") == 2e-5


@pytest.mark.engine
def test_evaluate_writes_metrics_win_rate_and_plots(sft_then_dpo, pool):
    """Real vLLM engines: both tiny models answer the test prompts, the quickstart's judge compares."""
    from rlaif.training.evaluate import evaluate_run

    run, _, _ = sft_then_dpo
    recipe = load_recipe(ROOT / "recipes" / "quickstart.yaml", ["judges.0.sampling.max_tokens=48"])
    metrics = evaluate_run(run, recipe.judge_spec(), 0.1, max_tokens=12, engine=SMOL_SETTINGS, pool=pool)
    assert metrics["pairs"] == 3 and metrics["beta"] == 0.1 and metrics["sft_model"] == str(run / "sft")
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
    assert json.loads((run / "eval" / "metrics.json").read_text())["pairs"] == 3
