"""The written preference dataset trains with TRL's DPOTrainer as is (tiny 2-layer model)."""

import math
from pathlib import Path

from datasets import load_from_disk

from generation.records import Message, PreferencePair
from judges.dataset import write_preference_dataset
from training.dpo import DPOSpec, train_dpo


def pair(i: int) -> PreferencePair:
    return PreferencePair(
        prompt_id=f"p{i}", prompt=[Message(role="user", content=f"What is {i} plus {i}?")],
        chosen=[Message(role="assistant", content=f"{i} plus {i} is {2 * i}.")],
        rejected=[Message(role="assistant", content="I like turtles.")],
        score_chosen=4.5, score_rejected=1.5, chosen_model="a", rejected_model="b",
        chosen_completion_id=f"c{i}", rejected_completion_id=f"r{i}", judge="j", pair_hash=f"h{i}",
    )


def test_dataset_is_trl_conversational_with_explicit_prompt(tmp_path):
    write_preference_dataset([pair(i) for i in range(3)], [pair(9)], tmp_path / "ds")
    ds = load_from_disk(str(tmp_path / "ds"))
    assert set(ds) == {"train_prefs", "test_prefs", "train_sft", "test_sft"} and ds["train_prefs"].num_rows == 3
    row = ds["test_prefs"][0]
    assert row["prompt"] == [{"role": "user", "content": "What is 9 plus 9?"}]
    assert row["chosen"] == [{"role": "assistant", "content": "9 plus 9 is 18."}]
    assert {"prompt_id", "score_chosen", "score_rejected"} <= set(row)
    write_preference_dataset([pair(1)], [], tmp_path / "empty_test")  # an empty split still has a schema
    assert load_from_disk(str(tmp_path / "empty_test"))["test_prefs"].column_names == ds["test_prefs"].column_names


def test_dpo_trains_and_saves_a_checkpoint(tmp_path, tiny_model_dir):
    write_preference_dataset([pair(i) for i in range(4)], [], tmp_path / "ds")
    spec = DPOSpec(model=tiny_model_dir, max_steps=2, per_device_train_batch_size=2, max_length=64,
                   learning_rate=1e-4, warmup_steps=0)
    metrics = train_dpo(tmp_path / "ds", spec, tmp_path / "dpo")
    assert metrics["steps"] == 2 and math.isfinite(metrics["train_loss"])
    out = Path(tmp_path / "dpo")
    assert (out / "model.safetensors").exists() and (out / "tokenizer_config.json").exists()
    assert (out / "trainer_state.json").exists()
