"""`rlaif train` under `accelerate launch`: two CPU processes (DDP over gloo) run dDPO steps on the
tiny model together, as the README's multi-GPU commands run it on GPUs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from tests.support.helpers import ROOT, free_port
from tests.training.test_training import FAST, distance, weights, write_dataset



def launch_two(recipe, out) -> None:
    """`rlaif train dpo RECIPE` under `accelerate launch`, 2 CPU processes over gloo."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120"}  # rank 0 starts Prefect beside rank 1's loading
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_ip", "127.0.0.1", "--main_process_port", str(free_port()),
           "-m", "rlaif", "train", "dpo", str(recipe), "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]

def test_two_processes_train_dpo_together_over_gloo(tmp_path, tiny_model_dir, prefect_home):
    write_dataset(tmp_path, n_train=8)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "ddp", "generators": [{"name": "g", "model": "m"}], "judge": {"name": "j", "model": "m"},
        "train": {"dpo": {"model": tiny_model_dir, "num_train_epochs": 1, **FAST}}}))
    launch_two(recipe, tmp_path)

    state = json.loads((tmp_path / "dpo" / "rlaif-stage.json").read_text())
    assert state["processes"] == 2
    # 8 rows, 2 per process per step: 2 processes take 4 rows a step (one process would take 4 steps)
    assert state["metrics"]["steps"] == 2
    trained = json.loads((tmp_path / "dpo" / "trainer_state.json").read_text())
    assert trained["global_step"] == 2
    assert distance(weights(tmp_path / "dpo"), weights(Path(tiny_model_dir))) > 0
    logs = list((tmp_path / "logs").glob("*-train.log"))
    assert len(logs) == 2  # one per process; both trained
    assert all("Traceback" not in log.read_text() for log in logs)


def test_two_processes_train_two_variants_from_one_stored_reference(tmp_path, tiny_model_dir, prefect_home):
    """A sweep under `accelerate launch`: both processes compute the first variant's reference pass
    together, the first writes the one file, and both read it for the second variant."""
    write_dataset(tmp_path, n_train=8)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"name": "ddp-sweep", "train": {"dpo": {
        "model": tiny_model_dir, "num_train_epochs": 1, **FAST,
        "variants": [{"name": "sigmoid", "beta": 0.1}, {"name": "ipo", "loss_type": "ipo", "beta": 0.5}]}}}))
    launch_two(recipe, tmp_path)

    states = [json.loads((tmp_path / "dpo" / v / "rlaif-stage.json").read_text()) for v in ("sigmoid", "ipo")]
    assert [s["processes"] for s in states] == [2, 2] and [s["metrics"]["steps"] for s in states] == [2, 2]
    assert [s["metrics"]["reference_computed"] for s in states] == [1, 0]
    assert [s["metrics"]["reference_read"] for s in states] == [0, 1]
    stored = list((tmp_path / "ref_logps").glob("*.arrow"))
    assert len(stored) == 1 and json.loads(stored[0].with_suffix(".json").read_text())["count"] == 8
    logs = [log.read_text() for log in (tmp_path / "logs").glob("*-train.log")]
    assert len(logs) == 2 and all("Traceback" not in text for text in logs)
    assert all("read from" in text for text in logs)  # each process read the file for the second variant
