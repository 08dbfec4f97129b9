"""The quickstart recipe end to end, as a real Prefect flow run, on a handful of prompts."""

import json

import pytest
from datasets import load_from_disk

from conftest import ROOT
from flows.pipeline import run
from flows.recipe import load_recipe

pytestmark = pytest.mark.engine


def test_quickstart_end_to_end(tmp_path, prefect_harness):
    recipe = load_recipe(ROOT / "recipes" / "quickstart.yaml", [
        "prompts.limit=5", "generators.0.sampling.max_tokens=32", "generators.1.sampling.max_tokens=32",
        "binarize.test_fraction=0.25", "train.sft.max_steps=1", "train.sft.max_length=128",
        "train.dpo.max_steps=1", "train.dpo.max_length=128",
    ])
    out = tmp_path / "run"
    reports = run(recipe, out)
    stages = {r.stage: r for r in reports}
    assert list(stages) == ["prompts", "generate", "judge", "binarize", "train-sft", "train-dpo"]
    assert stages["generate"].count_out == 10 and stages["generate"].notes["per_model"] == {
        "smollm2-135m": 5, "gemma3-270m": 5}
    assert stages["judge"].count_in == 10
    judged = stages["judge"].notes
    assert judged["parsed"] + judged["unparsed"] + judged["failed"] == 10

    ds = load_from_disk(str(out / "dataset"))
    rows = ds["train_prefs"].num_rows + ds["test_prefs"].num_rows
    skipped = sum(stages["binarize"].notes["skipped"].values())
    assert rows == stages["binarize"].count_out and rows + skipped == 5 and rows >= 2
    row = ds["train_prefs"][0]
    assert row["prompt"][-1]["role"] == "user" and row["chosen"][0]["role"] == "assistant"
    assert row["score_chosen"] > row["score_rejected"]
    assert (out / "sft" / "model.safetensors").exists() and (out / "dpo" / "model.safetensors").exists()
    assert (out / "dpo" / "start_model.txt").read_text().strip() == str(out / "sft")  # dDPO from the dSFT model
    summary = json.loads((out / "summary.json").read_text())
    assert [s["stage"] for s in summary] == list(stages)
    # every stage's records are on disk for a rerun or a second judge
    assert list((out / "completions").glob("shard-*.jsonl")) and list((out / "judgements" / "uf-smollm2").glob("*.jsonl"))
