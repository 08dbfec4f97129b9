"""Training on any dataset: dDPO from a local ultrafeedback_binarized-shaped dataset and from the run's
own, and the training stage keyed on the data it reads."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import yaml
from datasets import Dataset, DatasetDict

from rlaif.recipe.spec import load_recipe
from rlaif.training.datasets import source_key
from rlaif.training.dpo import DPOSpec
from rlaif.training.sft import SFTSpec
from tests.training.test_training import FAST, write_dataset


def uf_rows(n: int, answer: str = "I like turtles.") -> list[dict]:
    """HuggingFaceH4/ultrafeedback_binarized's columns: a string prompt beside whole conversations."""
    def conv(i: int, text: str) -> list[dict]:
        return [{"role": "user", "content": f"What is {i} plus {i}?"}, {"role": "assistant", "content": text}]

    return [{"prompt": f"What is {i} plus {i}?", "prompt_id": f"p{i}", "chosen": conv(i, f"{i} plus {i} is {2 * i}."),
             "rejected": conv(i, answer), "messages": conv(i, f"{i} plus {i} is {2 * i}."),
             "score_chosen": 9.0, "score_rejected": 2.0} for i in range(n)]


def save_uf(path, rows: list[dict]) -> str:
    DatasetDict({"train_prefs": Dataset.from_list(rows), "test_prefs": Dataset.from_list(rows[:2])}).save_to_disk(str(path))
    return str(path)


def recipe(tmp_path, dpo: dict):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"name": "sources", "generators": [{"name": "g", "model": "m"}],
                                    "judge": {"name": "j", "model": "m"}, "train": {"dpo": dpo}}))
    return load_recipe(path)


def test_ddpo_trains_from_a_local_ultrafeedback_binarized_dataset_and_from_the_run_dataset(
        tmp_path, tiny_model_dir, prefect_harness):
    """Through the train flow: a step each, and a rerun trains again only when the data it reads changed."""
    from rlaif.flows.pipeline import train_flow

    uf = save_uf(tmp_path / "uf", uf_rows(4))
    run = tmp_path / "run"
    block = {"model": tiny_model_dir, "max_steps": 1, **FAST}
    # with eval_strategy, test_prefs is the eval dataset, as in the handbook
    local = recipe(tmp_path, {**block, "dataset": uf, "eval_strategy": "steps", "eval_steps": 1,
                              "per_device_eval_batch_size": 2})
    (first,) = train_flow(local, str(run), "dpo")
    assert not first.cached and first.count_out == 1
    history = json.loads((run / "dpo" / "trainer_state.json").read_text())["log_history"]
    assert any("eval_loss" in h for h in history)
    (again,) = train_flow(local, str(run), "dpo")
    assert again.cached  # same data, same block: nothing trained

    save_uf(tmp_path / "uf2", uf_rows(4, answer="No idea."))  # the same folder, other rows
    shutil.rmtree(uf)
    (tmp_path / "uf2").rename(uf)
    (changed,) = train_flow(local, str(run), "dpo")
    assert not changed.cached and changed.count_out == 1

    write_dataset(run)  # the run's own dataset version: the default source
    (own,) = train_flow(recipe(tmp_path, block), str(run), "dpo")
    assert not own.cached and own.count_out == 1 and math.isfinite(own.notes["train_loss"])


def test_source_key_follows_the_data(tmp_path, monkeypatch):
    from huggingface_hub import constants

    run = tmp_path / "run"
    link = write_dataset(run)
    assert source_key(None, "train_prefs", link) == source_key(str(link), "train_prefs", "unused")  # by inputs hash
    assert source_key(None, "train_prefs", link) != source_key(None, "test_prefs", link)
    data = tmp_path / "pairs.jsonl"
    data.write_text('{"prompt": "q", "chosen": "a", "rejected": "b"}\n')
    before = source_key(str(data), "train", "unused")
    data.write_text('{"prompt": "q", "chosen": "a", "rejected": "c"}\n')
    assert source_key(str(data), "train", "unused") != before
    # hf:<id> offline (this machine reaches no Hub): the local cache's ref names the commit
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    unknown = source_key("hf:org/prefs", "train_prefs", "unused")
    ref = tmp_path / "hub" / "datasets--org--prefs" / "refs" / "main"
    ref.parent.mkdir(parents=True)
    ref.write_text("abc123\n")
    cached = source_key("hf:org/prefs", "train_prefs", "unused")
    ref.write_text("def456\n")
    assert len({unknown, cached, source_key("hf:org/prefs", "train_prefs", "unused")}) == 3


def test_dataset_split_and_eval_split_follow_the_handbook():
    assert SFTSpec(model="m").splits() == ("train_sft", None)
    assert DPOSpec().splits() == ("train_prefs", None)
    assert DPOSpec(eval_strategy="steps").splits() == ("train_prefs", "test_prefs")
    assert DPOSpec(eval_strategy=False).splits() == ("train_prefs", None)  # YAML's bare `no`
    assert DPOSpec(dataset="hf:x/y", dataset_split="train", eval_strategy="epoch").splits() == ("train", "test")


def test_every_rank_of_a_multi_gpu_launch_runs_and_the_first_holds_the_run(tmp_path, monkeypatch):
    """`accelerate launch ... -m rlaif train`: ranks other than 0 must not fail on the run's lock."""
    from rlaif.core.store import RunLocked, run_lock
    from rlaif.cli.main import Command, _run_locked

    ran = []
    spec = Command(lambda args: ran.append(1) or 0, lock=True)
    with run_lock(tmp_path):  # rank 0 holds the run
        monkeypatch.setenv("RANK", "1")
        assert _run_locked(spec, None, tmp_path) == 0
        monkeypatch.setenv("RANK", "0")
        with pytest.raises(RunLocked):
            _run_locked(spec, None, tmp_path)
    assert ran == [1]
