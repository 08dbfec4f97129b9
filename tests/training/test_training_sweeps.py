"""dDPO sweeps: reference log-probs kept by content (equal to TRL's own, read instead of computed),
variants trained from one reference pass into dpo/<name>/, and the recipe's checks of variants."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from rlaif.core.errors import ConfigError
from rlaif.recipe.spec import load_recipe
from rlaif.training import common
from tests.training.test_training import FAST, write_dataset


def trainer_parts(tmp_path: Path, model_dir: str, n_train: int = 6):
    """A tokenizer, the mapped train_prefs and a DPOConfig with the reference precomputed."""
    from trl import DPOConfig

    from rlaif.training.datasets import load_preferences

    data = write_dataset(tmp_path, n_train=n_train)
    args = DPOConfig(output_dir=str(tmp_path / "out"), use_cpu=True, report_to=[], precompute_ref_log_probs=True,
                     per_device_train_batch_size=2, max_length=64)
    return common.load_tokenizer(model_dir), load_preferences(None, "train_prefs", data), args


def model(model_dir: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir)


def test_stored_reference_equals_trls_own_and_is_read_instead_of_computed(tmp_path, tiny_model_dir, monkeypatch):
    """TRL's own precompute and the store's file hold the same numbers for the same rows; a second
    trainer with the same key reads the file and never runs the reference forward; other rows
    are another key, computed afresh."""
    import torch
    from trl import DPOTrainer

    from rlaif.training.reference import COLUMNS, ReferenceStore, StoredReferenceDPO

    tok, train, args = trainer_parts(tmp_path, tiny_model_dir)
    own = DPOTrainer(model=model(tiny_model_dir), args=args, train_dataset=train, processing_class=tok).train_dataset
    store = ReferenceStore(tmp_path / "ref_logps")
    first = StoredReferenceDPO(model=model(tiny_model_dir), args=args, train_dataset=train, processing_class=tok,
                               store=store)
    assert len(store.computed) == 1 and store.read == []
    files = sorted((tmp_path / "ref_logps").glob("*.arrow"))
    assert len(files) == 1 and files[0].with_suffix(".json").exists()
    from datasets import Dataset

    kept = Dataset.from_file(str(files[0]))
    for column in COLUMNS:
        expected = torch.tensor(own[column])
        assert torch.allclose(torch.tensor(kept[column]), expected, atol=1e-5, rtol=1e-6), column
        assert torch.allclose(torch.tensor(first.train_dataset[column]), expected, atol=1e-5, rtol=1e-6)
        assert float(expected.abs().min()) > 0  # real log-probs, not a default

    runs = []
    real = DPOTrainer.compute_ref_log_probs
    monkeypatch.setattr(DPOTrainer, "compute_ref_log_probs",
                        lambda self, *a, **k: runs.append(1) or real(self, *a, **k))
    second = StoredReferenceDPO(model=model(tiny_model_dir), args=args, train_dataset=train, processing_class=tok,
                                store=store)
    assert runs == [] and len(store.read) == 1 and len(store.computed) == 1
    for column in COLUMNS:
        assert second.train_dataset[column] == first.train_dataset[column]

    (tmp_path / "other").mkdir()
    _, fewer, _ = trainer_parts(tmp_path / "other", tiny_model_dir, n_train=4)
    StoredReferenceDPO(model=model(tiny_model_dir), args=args, train_dataset=fewer, processing_class=tok, store=store)
    assert runs and len(store.computed) == 2 and len(list((tmp_path / "ref_logps").glob("*.arrow"))) == 2


def sweep_recipe(path: Path, model_dir: str, variants: list[dict], **dpo) -> Path:
    path.write_text(yaml.safe_dump({"name": "sweep", "train": {"dpo": {
        "model": model_dir, "max_steps": 2, **FAST, "learning_rate": 1e-3, **dpo, "variants": variants}}}))
    return path


VARIANTS = [{"name": "sigmoid-0.1", "beta": 0.1}, {"name": "ipo-0.5", "loss_type": "ipo", "beta": 0.5}]


def test_two_variants_train_from_one_stored_reference_file(tmp_path, tiny_model_dir, prefect_harness, monkeypatch):
    """`rlaif train dpo` with two variants: each trains into dpo/<name>/ (its own stage state, its
    own loss), the first computes the reference pass into one file and the second reads it; an
    unchanged rerun trains nothing and a changed variant retrains alone, reading the same file.
    Then `rlaif evaluate` reports the variants side by side, and `--variant` evaluates one."""
    from trl import DPOTrainer

    from rlaif.cli.main import main

    runs = []
    real = DPOTrainer.compute_ref_log_probs
    monkeypatch.setattr(DPOTrainer, "compute_ref_log_probs",
                        lambda self, *a, **k: runs.append(1) or real(self, *a, **k))
    write_dataset(tmp_path)
    recipe = sweep_recipe(tmp_path / "r.yaml", tiny_model_dir, VARIANTS)
    assert main(["train", "dpo", str(recipe), "--out", str(tmp_path)]) == 0
    states = {v["name"]: common.stage_state(tmp_path / "dpo" / v["name"]) for v in VARIANTS}
    assert [s["metrics"]["reference_computed"] for s in states.values()] == [1, 0]
    assert [s["metrics"]["reference_read"] for s in states.values()] == [0, 1]
    assert states["ipo-0.5"]["beta"] == 0.5 and states["sigmoid-0.1"]["beta"] == 0.1
    assert len(list((tmp_path / "ref_logps").glob("*.arrow"))) == 1
    assert not (tmp_path / "dpo" / "config.json").exists()  # the block itself is no variant
    calls = len(runs)
    assert calls > 0

    def first_loss(name: str) -> float:
        history = json.loads((tmp_path / "dpo" / name / "trainer_state.json").read_text())["log_history"]
        return next(h["loss"] for h in history if "loss" in h)

    # at step 0 the policy is its reference: sigmoid's loss is log 2, IPO's (0 - 1/(2 beta))^2 = 1
    assert first_loss("sigmoid-0.1") == pytest.approx(0.6931, abs=2e-3)
    assert first_loss("ipo-0.5") == pytest.approx(1.0, abs=2e-3)

    assert main(["train", "dpo", str(recipe), "--out", str(tmp_path)]) == 0  # unchanged: nothing trains
    assert len(runs) == calls
    assert {v["name"]: common.stage_state(tmp_path / "dpo" / v["name"]) for v in VARIANTS} == states

    changed = sweep_recipe(tmp_path / "r2.yaml", tiny_model_dir, [VARIANTS[0], {**VARIANTS[1], "learning_rate": 5e-4}])
    assert main(["train", "dpo", str(changed), "--out", str(tmp_path)]) == 0
    assert len(runs) == calls  # the retrained variant read the stored reference
    assert common.stage_state(tmp_path / "dpo" / "sigmoid-0.1") == states["sigmoid-0.1"]
    again = common.stage_state(tmp_path / "dpo" / "ipo-0.5")
    assert again["inputs"] != states["ipo-0.5"]["inputs"] and again["metrics"]["reference_read"] == 1

    # the report: every variant against dSFT (here the tiny start model) on test_prefs, one table
    assert main(["evaluate", str(tmp_path), "--no-win-rate"]) == 0
    rows = {r["variant"]: r for r in json.loads((tmp_path / "eval" / "variants.json").read_text())}
    assert list(rows) == ["ipo-0.5", "sigmoid-0.1"]
    assert rows["ipo-0.5"]["loss"] == "ipo" and rows["ipo-0.5"]["beta"] == 0.5 and rows["sigmoid-0.1"]["steps"] == 2
    for name, r in rows.items():
        metrics = json.loads((tmp_path / "eval" / "variants" / name / "metrics.json").read_text())
        assert metrics["dpo_model"] == str(tmp_path / "dpo" / name)
        assert r["drift chosen"] == metrics["drift"]["chosen"] != 0 and r["drift rejected"] != 0
        assert r["reward acc"] == metrics["dpo_implicit_reward"]["accuracy"]
        assert r["margin"] == pytest.approx(r["beta"] * (r["drift chosen"] - r["drift rejected"]))
    table = (tmp_path / "eval" / "variants.md").read_text()
    assert "| ipo-0.5 | ipo | 0.5 |" in table and "| sigmoid-0.1 | sigmoid | 0.1 |" in table
    assert (tmp_path / "eval" / "variants" / "plots" / "margins.png").stat().st_size > 0

    assert main(["evaluate", str(tmp_path), "--no-win-rate", "--variant", "ipo-0.5"]) == 0
    assert (tmp_path / "eval" / "variants.md").read_text() == table  # one variant's evaluation keeps the report
    assert main(["evaluate", str(tmp_path), "--no-win-rate", "--variant", "nope"]) != 0


@pytest.mark.parametrize("variants, message", [
    ([{"name": "a", "beta": 0.1}, {"name": "a", "beta": 0.2}], "unique, 'a' is given twice"),
    ([{"name": "../up", "beta": 0.1}], "plain folder name"),
    ([{"name": "adapter"}], "plain folder name"),
    ([{"name": "checkpoint-3"}], "looks like a trainer checkpoint"),
    ([{"beta": 0.1}], "name None"),
    ([], "an empty list"),
])
def test_variant_names_are_plain_and_unique(tmp_path, variants, message):
    with pytest.raises(ConfigError, match="train.dpo.variants") as e:
        load_recipe(sweep_recipe(tmp_path / "r.yaml", "m", variants))
    assert message in str(e.value) and str(tmp_path / "r.yaml") in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("override, message", [
    ({"bata": 0.1}, "'bata': not a field of TRL's DPOConfig"),
    ({"output_dir": "x"}, "'output_dir': not a field of TRL's DPOConfig"),
    ({"model": "other"}, "'model': set for every variant"),
    ({"precompute_ref_log_probs": False}, "'precompute_ref_log_probs': False would recompute"),
])
def test_a_variant_override_must_be_a_dpo_config_field(tmp_path, override, message):
    with pytest.raises(ConfigError) as e:
        load_recipe(sweep_recipe(tmp_path / "r.yaml", "m", [{"name": "ok", "beta": 0.2}, {"name": "v2", **override}]))
    text = str(e.value)
    assert text == f"{tmp_path / 'r.yaml'}: field 'train.dpo.variants' (variant 'v2'): {message}" + text.split(message)[1]
    assert "\n" not in text


def test_variant_specs_are_the_block_with_the_overrides(tmp_path):
    spec = load_recipe(sweep_recipe(tmp_path / "r.yaml", "m", VARIANTS, loss_type="sigmoid")).train.dpo
    found = dict(spec.variant_specs())
    assert list(found) == ["sigmoid-0.1", "ipo-0.5"]
    ipo = found["ipo-0.5"]
    assert ipo.get("loss_type") == "ipo" and ipo.get("beta") == 0.5 and ipo.get("learning_rate") == 1e-3
    assert ipo.get("precompute_ref_log_probs") is True and ipo.model == "m" and ipo.variants is None


def test_mt_bench_takes_the_variants_of_a_sweep(tmp_path):
    """Every trained variant is a model under test (`ddpo-<name>`), or only the one named."""
    from rlaif.evaluation.mt_bench import ModelUnderTest, run_models

    recipe = load_recipe(sweep_recipe(tmp_path / "r.yaml", "base-model", VARIANTS))
    for name in ("ipo-0.5", "sigmoid-0.1"):
        (tmp_path / "dpo" / name).mkdir(parents=True)
        (tmp_path / "dpo" / name / "config.json").write_text("{}")
    assert run_models(tmp_path, recipe) == [
        ModelUnderTest("base", "base-model"), ModelUnderTest("ddpo-ipo-0.5", str(tmp_path / "dpo" / "ipo-0.5")),
        ModelUnderTest("ddpo-sigmoid-0.1", str(tmp_path / "dpo" / "sigmoid-0.1"))]
    assert [m.label for m in run_models(tmp_path, recipe, "ipo-0.5")] == ["base", "ddpo-ipo-0.5"]


def test_the_report_plots_margins_and_win_rate_against_drift(tmp_path):
    """The report's rows, table and plots from two variants' evaluations, one of them judged."""
    from rlaif.evaluation.sweep_report import markdown, plot_variants, row

    table = []
    for name, win in (("a", {"ddpo_win_rate": 0.75, "ddpo_answer_tokens": 31.5, "judged": 4}), ("b", None)):
        (tmp_path / "dpo" / name).mkdir(parents=True)
        history = [{"step": s, "rewards/margins": 0.1 * s, "loss": 0.6} for s in (1, 2, 3)]
        (tmp_path / "dpo" / name / "trainer_state.json").write_text(json.dumps({"log_history": history}))
        metrics = {"beta": 0.1, "pairs": 3, "dpo_implicit_reward": {"accuracy": 2 / 3, "margin": 0.02},
                   "drift": {"chosen": -0.5, "rejected": -1.5}, "win_rate": win}
        table.append(row(name, metrics, {"loss_type": ["ipo"], "metrics": {"steps": 3, "train_loss": 0.55}}))
    assert table[0]["win rate"] == 0.75 and table[0]["answer tokens"] == 31.5 and table[1]["win rate"] is None
    text = markdown(table, tmp_path)
    assert "| a | ipo | 0.1 | 0.667 | 0.02 | -0.5 | -1.5 | 0.75 | 31.5 | 3 | 0.55 |" in text
    assert "| b | ipo | 0.1 | 0.667 | 0.02 | -0.5 | -1.5 | - | - | 3 | 0.55 |" in text
    plots = plot_variants(tmp_path, ["a", "b"], table, tmp_path / "plots")
    assert [Path(p).name for p in plots] == ["margins.png", "win_rate_vs_drift.png"]
    assert all(Path(p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in plots)
