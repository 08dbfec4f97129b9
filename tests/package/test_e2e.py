"""The quickstart recipe end to end through the `rlaif` command, on a handful of prompts."""

import json
import os
import subprocess
import sys

import pytest
from datasets import load_from_disk

from tests.support.helpers import ROOT

pytestmark = pytest.mark.engine
SMALL = ["prompts.limit=5", "generators.0.sampling.max_tokens=32", "generators.1.sampling.max_tokens=32",
         "binarize.test_fraction=0.25", "train.sft.max_steps=1", "train.sft.max_length=128",
         "train.dpo.max_steps=1", "train.dpo.max_length=128"]


def test_quickstart_end_to_end(tmp_path, prefect_home):
    """`rlaif run` of the quickstart, through tests/support/trainer_probe.py (the same command, with a look
    around as each trainer starts: the GPU hand-off from the judge's engine to dSFT, then to dDPO)."""
    out, probe = tmp_path / "run", tmp_path / "trainers.jsonl"
    cmd = [sys.executable, str(ROOT / "tests" / "support" / "trainer_probe.py"), str(probe),
           "run", str(ROOT / "recipes" / "quickstart.yaml"), "--out", str(out)]
    for s in SMALL:
        cmd += ["--set", s]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1200,
                          env={**{k: v for k, v in os.environ.items() if k != "VLLM_CPU_KVCACHE_SPACE"},  # the recipe decides, as for a user
                               "PREFECT_HOME": str(prefect_home), "COLUMNS": "120"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    console = (proc.stdout + proc.stderr).splitlines()
    assert len(console) < 60, "\n".join(console)  # progress, notes and the table; the rest is in the log
    assert not any("INFO" in line or "WARNING" in line for line in console), "\n".join(console)
    (log,) = (out / "logs").glob("*-run.log")
    assert "vllm" in log.read_text()  # the engines' own output went to the log

    stages = {r["stage"]: r for r in json.loads((out / "summary.json").read_text())}
    assert list(stages) == ["prompts", "generate", "judge", "binarize", "train-sft", "train-dpo"]
    assert stages["generate"]["count_out"] == 10 and stages["generate"]["notes"]["per_model"] == {
        "smollm2-135m": 5, "gemma3-270m": 5}
    assert stages["judge"]["count_in"] == 10
    judged = stages["judge"]["notes"]
    assert judged["parsed"] + judged["unparsed"] + judged["failed"] == 10
    ds = load_from_disk(str(out / "dataset"))
    rows = ds["train_prefs"].num_rows + ds["test_prefs"].num_rows
    skipped = sum(stages["binarize"]["notes"]["skipped"].values())
    assert rows == stages["binarize"]["count_out"] and rows + skipped == 5 and rows >= 2
    row = ds["train_prefs"][0]
    assert row["prompt"][-1]["role"] == "user" and row["chosen"][0]["role"] == "assistant"
    assert row["score_chosen"] > row["score_rejected"]
    assert stages["train-sft"]["count_out"] == 1 and stages["train-dpo"]["count_out"] == 1
    # each trainer had the machine to itself: no engine held, no vLLM process left, dSFT's model gone
    free = {"engines": [], "vllm_processes": [], "earlier_models_alive": 0}
    assert [json.loads(line) for line in probe.read_text().splitlines()] == [free, free]
    state = json.loads((out / "dpo" / "rlaif-stage.json").read_text())
    assert state["start_model"] == str(out / "sft")  # dDPO started from this run's dSFT output
    # every stage's records are on disk for a rerun or a second judge
    assert list((out / "completions").glob("shard-*.jsonl")) and list((out / "judgements" / "uf-smollm2").glob("*.jsonl"))
    # the card shows the judge's biases: length, and self-preference (smollm2-135m answers on the judge's model)
    card = (out / "dataset" / "README.md").read_text()
    bias = json.loads((out / "dataset" / "manifest.json").read_text())["judge_bias"]
    section = card[card.index("## The judge's biases"):card.index("## Plots")]
    rho, n = bias["length"]["spearman_words"], bias["length"]["completions"]
    shown = "n/a" if rho is None else f"{rho:.2f}"
    assert 2 <= n <= 10 and f"| length: Spearman rho, score vs words | {shown} (n={n}) |" in section
    assert bias["self_preference"]["own_members"] == ["smollm2-135m"]
    assert "| self-preference: members on the judge's model | smollm2-135m |" in section
    assert "| self-preference: own minus others |" in section
    for png in ("plots/judge_length.png", "plots/judge_self_preference.png"):
        assert f"]({png})" in card and (out / "dataset" / png).is_file()
