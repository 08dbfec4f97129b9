"""A recipe that only trains (a preference dataset and a `train:` block, no generators or judges)
is valid: `rlaif run` runs its training stages alone, and the closing table counts the pairs they
trained on. A recipe with neither generators nor training is one line."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.support.faulty import error_lines, prefect_env, rlaif
from rlaif.cli.main import main
from tests.training.test_train_sources import save_uf, uf_rows
from tests.training.test_training import FAST


def test_a_recipe_that_only_trains_runs_its_training_stage_and_counts_its_pairs(
        tmp_path, tiny_model_dir, prefect_harness):
    data = save_uf(tmp_path / "pairs", uf_rows(8))  # 8 pairs in train_prefs (ultrafeedback_binarized's layout)
    path = tmp_path / "train-only.yaml"
    path.write_text(yaml.safe_dump({"name": "train-only", "train": {"dpo": {
        "model": tiny_model_dir, "dataset": data, "max_steps": 1, **FAST}}}))
    out, env = tmp_path / "run", prefect_env(tmp_path)

    done = rlaif("run", str(path), "--out", str(out), env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    (stage,) = json.loads((out / "summary.json").read_text())  # the training stage alone
    assert stage["stage"] == "train-dpo" and stage["count_in"] == 8 and stage["count_out"] == 1
    assert not (out / "prompts").exists() and not (out / "completions").exists()
    assert (out / "dpo" / "config.json").exists()
    assert not list((out / "dpo").glob("checkpoint-*"))  # the trainer's final checkpoint, removed once trained
    row = next(line for line in (done.stdout + done.stderr).splitlines() if "train-dpo" in line and "│" in line)
    assert [cell.strip() for cell in row.split("│")][1:4] == ["train-dpo", "8", "1"]  # the closing table

    again = rlaif("train", "dpo", str(path), "--out", str(out), env=env)  # done: counted from the stage's own state
    assert again.returncode == 0, again.stderr[-3000:]
    row = next(line for line in (again.stdout + again.stderr).splitlines() if "train-dpo" in line and "│" in line)
    assert [cell.strip() for cell in row.split("│")][1:4] == ["train-dpo", "8", "1"] and "(cached)" in row


@pytest.mark.parametrize("recipe, problem", [
    ({"name": "idle"}, "nothing to do: give generators and judges (to make a preference dataset), a train: block "
                       "with sft or dpo (to train on one), or both"),
    ({"name": "idle", "train": {"dpo": None}}, "nothing to do: give generators"),
    ({"name": "no-judge", "generators": [{"name": "g", "model": "m"}]},
     "field 'judges': generators need at least one judge to rate their answers"),
])
def test_a_recipe_with_nothing_to_do_is_one_line(tmp_path, capsys, recipe, problem):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["run", str(path), "--out", str(tmp_path / "run")]) == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert line.startswith(f"error: {path}: {problem}")


def test_rlaif_train_counts_the_pairs_it_trained_on(tmp_path, tiny_model_dir, prefect_harness):
    """`rlaif train dpo` on a dataset other than the run's: `in` is that dataset's pairs, not 0."""
    from rlaif.flows.pipeline import train_flow
    from tests.training.test_train_sources import recipe

    data = save_uf(tmp_path / "pairs", uf_rows(6))
    (report,) = train_flow(recipe(tmp_path, {"model": tiny_model_dir, "dataset": data, "max_steps": 1, **FAST}),
                           str(tmp_path / "run"), "dpo")
    assert report.stage == "train-dpo" and report.count_in == 6 and report.count_out == 1
