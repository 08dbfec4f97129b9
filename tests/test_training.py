"""dSFT then dDPO with TRL on a written dataset (tiny 2-layer model), resume, LoRA, recipes, evaluate."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from flows.recipe import RecipeError, load_recipe
from training.dpo import DPOSpec, train_dpo
from training.sft import SFTSpec, train_sft

ROOT = Path(__file__).resolve().parents[1]
FAST = dict(per_device_train_batch_size=2, max_length=64, warmup_steps=0, learning_rate=1e-3)


def write_dataset(path: Path, n_train: int = 6, n_test: int = 3) -> Path:
    """The dataset contract: train_prefs/test_prefs and train_sft/test_sft, conversational."""
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

    def prefs(r: list[dict]) -> Dataset:
        return Dataset.from_list(r)

    def sft(r: list[dict]) -> Dataset:
        return Dataset.from_list([{"prompt": x["prompt"], "completion": x["chosen"], "messages": x["messages"],
                                   "prompt_id": x["prompt_id"]} for x in r])

    train, test = rows(0, n_train), rows(100, 100 + n_test)
    DatasetDict({"train_prefs": prefs(train), "test_prefs": prefs(test),
                 "train_sft": sft(train), "test_sft": sft(test)}).save_to_disk(str(path / "v1"))
    (path / "dataset").symlink_to(path / "v1")  # the run's dataset may be a link to its latest version
    return path / "dataset"


@pytest.fixture(scope="module")
def sft_then_dpo(tmp_path_factory, tiny_model_dir):
    """A run dir with dSFT then dDPO (from the dSFT output, model: unset) trained on it."""
    run = tmp_path_factory.mktemp("run")
    data = write_dataset(run)
    sft = train_sft(data, SFTSpec(model=tiny_model_dir, max_steps=3, **FAST), run / "sft")
    dpo = train_dpo(data, DPOSpec(max_steps=3, beta=0.1, **FAST), run / "dpo")
    return run, sft, dpo


def test_sft_then_dpo_from_the_sft_checkpoint(sft_then_dpo):
    run, sft, dpo = sft_then_dpo
    assert sft["steps"] == 3 and math.isfinite(sft["train_loss"])
    assert dpo["steps"] == 3 and math.isfinite(dpo["train_loss"])
    for stage in ("sft", "dpo"):
        assert (run / stage / "model.safetensors").exists() and (run / stage / "tokenizer_config.json").exists()
    assert (run / "dpo" / "start_model.txt").read_text().strip() == str(run / "sft")
    history = json.loads((run / "dpo" / "trainer_state.json").read_text())["log_history"]
    assert any("rewards/margins" in h for h in history)


def test_dpo_without_sft_output_says_what_to_do(tmp_path):
    data = write_dataset(tmp_path)
    with pytest.raises(FileNotFoundError, match="rlaif train sft"):
        train_dpo(data, DPOSpec(max_steps=1), tmp_path / "dpo")


def test_resume_continues_from_the_last_checkpoint(tmp_path, tiny_model_dir):
    data = write_dataset(tmp_path)
    spec = DPOSpec(model=tiny_model_dir, max_steps=2, save_steps=1, save_total_limit=None, loss_type="ipo", **FAST)
    first = train_dpo(data, spec, tmp_path / "dpo")
    assert first["steps"] == 2 and (tmp_path / "dpo" / "checkpoint-2").is_dir()
    resumed = train_dpo(data, spec.model_copy(update={"max_steps": 3, "resume": True}), tmp_path / "dpo")
    assert resumed["steps"] == 3
    state = json.loads((tmp_path / "dpo" / "trainer_state.json").read_text())
    steps = [h["step"] for h in state["log_history"] if "loss" in h]
    assert steps == [1, 2, 3]  # steps 1-2 come from checkpoint-2's state, only step 3 was trained now


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


def test_qlora_on_cpu_fails_clearly(tmp_path, tiny_model_dir):
    data = write_dataset(tmp_path)
    spec = SFTSpec(model=tiny_model_dir, max_steps=1, lora={"load_in_4bit": True}, **FAST)
    with pytest.raises(ValueError, match="load_in_4bit.*GPU"):
        train_sft(data, spec, tmp_path / "sft")


def test_unknown_args_field_is_named(tmp_path, tiny_model_dir):
    data = write_dataset(tmp_path)
    with pytest.raises(ValueError, match="args.not_a_field"):
        train_sft(data, SFTSpec(model=tiny_model_dir, args={"not_a_field": 1}, **FAST), tmp_path / "sft")


def test_recipe_with_a_wrong_training_field_names_file_and_field(tmp_path):
    text = (ROOT / "recipes" / "quickstart.yaml").read_text()
    assert "    learning_rate:" in text
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("    learning_rate:", "    learnig_rate:", 1))
    with pytest.raises(RecipeError) as err:
        load_recipe(bad)
    assert str(bad) in str(err.value) and "train.sft.learnig_rate" in str(err.value)
    assert "unknown field" in str(err.value)


@pytest.mark.parametrize("stage", ["sft", "dpo"])
def test_zephyr_recipes_load(stage):
    recipe = load_recipe(ROOT / "recipes" / "zephyr-7b-beta" / f"{stage}.yaml")
    spec = getattr(recipe.train, stage)
    assert spec is not None and spec.gradient_checkpointing
    if stage == "dpo":
        assert spec.model is None and spec.learning_rate == 5e-7 and spec.beta == 0.01
    else:
        assert spec.model == "mistralai/Mistral-7B-v0.1" and spec.learning_rate == 2e-5


def test_quickstart_recipe_trains_sft_then_dpo():
    recipe = load_recipe(ROOT / "recipes" / "quickstart.yaml")
    assert recipe.train.sft is not None and recipe.train.dpo is not None
    assert recipe.train.dpo.model is None  # dDPO starts from the quickstart's own dSFT model


@pytest.mark.engine
def test_evaluate_writes_metrics_win_rate_and_plots(sft_then_dpo):
    """Real vLLM engines: both tiny models answer the test prompts, the quickstart's judge compares."""
    from training.evaluate import evaluate_run

    run, _, _ = sft_then_dpo
    recipe = load_recipe(ROOT / "recipes" / "quickstart.yaml", ["judges.0.sampling.max_tokens=48"])
    (run / "recipe.json").write_text(recipe.model_dump_json())
    metrics = evaluate_run(run, max_tokens=12)
    assert metrics["pairs"] == 3 and metrics["beta"] == recipe.train.dpo.beta
    reward = metrics["dpo_implicit_reward"]
    assert 0 <= reward["accuracy"] <= 1 and math.isfinite(reward["margin"])
    assert reward["margin"] == pytest.approx(reward["chosen"] - reward["rejected"])
    # the implicit-reward margin is beta times the change of the mean log-ratio from dSFT to dDPO
    assert reward["margin"] == pytest.approx(metrics["beta"] * metrics["gain"]["margin"], rel=1e-4, abs=1e-6)
    assert set(metrics["preference"]) == {"dsft", "ddpo"}
    plots = {Path(p).name for p in metrics["plots"]}
    assert {"dpo_loss.png", "dpo_rewards_chosen.png", "dpo_rewards_rejected.png", "dpo_rewards_margins.png",
            "dpo_rewards_accuracies.png", "sft_loss.png"} <= plots
    assert all(Path(p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in metrics["plots"])
    assert metrics["dsft_implicit_reward"]["accuracy"] == 0.5  # its own reference: every pair a tie
    win = metrics["win_rate"]
    assert win["judge"] == "uf-smollm2" and win["prompts"] == 3 and win["pairs"] == 3
    assert win["judged"] + win["unjudged"] == 3 and win["ddpo_wins"] + win["dsft_wins"] + win["ties"] == win["judged"]
    assert win["judged"] == 0 or 0 <= win["ddpo_win_rate"] <= 1
    assert list((run / "eval" / "completions").glob("shard-*.jsonl"))
    assert json.loads((run / "eval" / "metrics.json").read_text())["pairs"] == 3
