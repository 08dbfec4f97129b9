"""Training that is what it says, on the tiny 2-layer model: checkpoints of other inputs are never
resumed (whatever `resume` says); a LoRA or QLoRA stage leaves a plain model that the next stage and
transformers load; full fine-tuning keeps float32 weights on GPU; a stage whose weights did not move
fails with exit code 3 and writes no stage marker; the console shows a training stage's steps and
loss as it shows the other stages' progress."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from rlaif.training import common
from rlaif.training.dpo import DPOSpec
from rlaif.training.sft import SFTSpec
from tests.training.test_training import FAST, write_dataset
from tests.training.test_training import weights as saved

LORA = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}


def write_recipe(path: Path, train: dict) -> Path:
    path.write_text(yaml.safe_dump({"name": "checks", "generators": [{"name": "g", "model": "m"}],
                                    "judge": {"name": "j", "model": "m"}, "train": train}))
    return path


def equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)


# ----------------------------------------------------------------------------- item 2: resume
def test_changed_inputs_train_from_scratch_even_with_resume_true(tmp_path, tiny_model_dir, prefect_harness):
    """A finished stage's checkpoints stay in its folder (keep_checkpoints); after the data changes, a rerun with
    `resume: true` trains every step again on the new data (it would otherwise resume the old
    finished checkpoint, train nothing, and mark the new inputs trained)."""
    from rlaif.flows.pipeline import train_flow
    from rlaif.recipe.spec import load_recipe

    old, new = write_dataset(tmp_path / "old", n_train=4), write_dataset(tmp_path / "new", n_train=6)
    block = {"model": tiny_model_dir, "max_steps": 2, "save_steps": 1, "save_total_limit": None, "resume": True,
             "keep_checkpoints": True, **FAST}
    run = tmp_path / "run"
    (first,) = train_flow(load_recipe(write_recipe(tmp_path / "a.yaml", {"sft": {**block, "dataset": str(old)}})),
                          str(run), "sft")
    assert first.count_out == 2 and (run / "sft" / "checkpoint-2").is_dir()
    trained_on_old = saved(run / "sft")

    (second,) = train_flow(load_recipe(write_recipe(tmp_path / "b.yaml", {"sft": {**block, "dataset": str(new)}})),
                           str(run), "sft")
    state = common.stage_state(run / "sft")
    assert not second.cached and state["resumed_from"] is None and state["metrics"]["steps"] == 2
    history = json.loads((run / "sft" / "trainer_state.json").read_text())["log_history"]
    assert sorted(h["step"] for h in history if "loss" in h) == [1, 2]  # both steps trained in this run
    # the weights are those of a run on the new data from scratch, in a folder of its own
    (fresh,) = train_flow(load_recipe(tmp_path / "b.yaml"), str(tmp_path / "fresh"), "sft")
    assert not equal(saved(run / "sft"), trained_on_old)
    assert equal(saved(run / "sft"), saved(tmp_path / "fresh" / "sft"))


# ----------------------------------------------------------------------------- item 3: LoRA / QLoRA outputs
def test_a_saved_adapter_merges_into_a_plain_model(tmp_path, tiny_model_dir):
    """The function both LoRA and QLoRA stages end with: the base reloaded unquantized, the saved
    adapter applied and merged; transformers loads the result as a plain model that computes what
    base + adapter computes."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from rlaif.training import weights

    torch.manual_seed(0)
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                                LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:  # peft starts B at zero: give the adapter an effect
            torch.nn.init.normal_(p, std=0.5)
    peft_model.save_pretrained(str(tmp_path / "adapter"))
    tokens = torch.tensor([[1, 42, 7, 99, 3]])
    with torch.no_grad():
        expected = peft_model(tokens).logits

    weights.merge_adapter(tiny_model_dir, tmp_path / "adapter", tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged"))
    assert not any("lora" in k for k in saved(tmp_path / "merged"))
    with torch.no_grad():
        assert torch.allclose(merged(tokens).logits, expected, atol=1e-4)
        assert not torch.allclose(AutoModelForCausalLM.from_pretrained(tiny_model_dir)(tokens).logits, expected, atol=1e-2)


def test_a_qlora_dsft_is_saved_as_a_plain_model_that_ddpo_starts_from(tmp_path, tiny_model_dir, prefect_harness,
                                                                      monkeypatch):
    """A QLoRA dSFT (its 4-bit load swapped for a plain one: bitsandbytes needs CUDA) leaves a merged
    model in <run>/sft beside its adapter, and dDPO with `model` unset starts from it."""
    from transformers import AutoModelForCausalLM

    from rlaif.cli.main import main

    real_load = common.load_model

    def load_unquantized(path, spec, *args):  # what this machine can load in place of NF4
        lora = spec.lora.model_copy(update={"load_in_4bit": False})
        return real_load(path, spec.model_copy(update={"lora": lora}), *args)

    monkeypatch.setattr(common, "load_model", load_unquantized)
    run = tmp_path / "run"
    write_dataset(run)
    qlora = {**LORA, "load_in_4bit": True}
    recipe = write_recipe(tmp_path / "r.yaml", {"sft": {"model": tiny_model_dir, "max_steps": 1, "lora": qlora, **FAST},
                                                "dpo": {"max_steps": 1, "lora": LORA, **FAST}})
    assert main(["train", "sft", str(recipe), "--out", str(run)]) == 0
    assert (run / "sft" / "adapter" / "adapter_config.json").exists()
    plain = AutoModelForCausalLM.from_pretrained(str(run / "sft"))  # no peft, no quantization config
    assert type(plain).__name__ == "LlamaForCausalLM" and getattr(plain.config, "quantization_config", None) is None
    assert not equal(saved(run / "sft"), saved(Path(tiny_model_dir)))  # the adapter is merged in

    assert main(["train", "dpo", str(recipe), "--out", str(run)]) == 0
    assert common.stage_state(run / "dpo")["start_model"] == str(run / "sft")
    assert (run / "dpo" / "model.safetensors").exists()


# ----------------------------------------------------------------------------- item 4: weights that move
@pytest.mark.parametrize("lora, deepspeed, dtype", [
    (None, False, "float32"),  # full fine-tuning: float32 master weights, bf16 autocast
    (LORA, False, "bfloat16"),  # the base is frozen: nothing to lose
    (None, True, "bfloat16"),  # DeepSpeed keeps float32 master weights itself
])
def test_on_gpu_full_fine_tuning_loads_float32_weights(tiny_model_dir, monkeypatch, lora, deepspeed, dtype):
    import torch

    monkeypatch.setattr(common, "on_gpu", lambda: True)  # the GPU's choice, taken on this CPU
    if deepspeed:  # as `accelerate launch` with a DeepSpeed config sets it
        monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    assert common.load_model(tiny_model_dir, SFTSpec(model=tiny_model_dir, lora=lora)).dtype == getattr(torch, dtype)


def test_an_update_below_bfloat16_resolution_is_seen_as_no_change(tiny_model_dir):
    """Why float32: the recipe's lr 5e-7 step leaves bfloat16 weights where they were (a few near
    zero move) and moves float32 ones; the sample a stage takes before training tells the two apart."""
    import torch
    from transformers import AutoModelForCausalLM

    from rlaif.training import weights

    for dtype, moves in ((torch.bfloat16, False), (torch.float32, True)):
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=dtype)
        sample = weights.Sample.of(model)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.full_like(p, 5e-7))  # one Adam step at lr 5e-7 moves each weight by about lr
        assert (sample.moved(model) >= weights.MIN_MOVED) is moves, dtype


def test_a_stage_whose_weights_did_not_change_fails_with_exit_3(tmp_path, tiny_model_dir, prefect_harness, capsys):
    from rlaif.cli.main import main

    run = tmp_path / "run"
    write_dataset(run)
    recipe = write_recipe(tmp_path / "r.yaml", {"sft": {"model": tiny_model_dir, "max_steps": 2, **FAST,
                                                        "learning_rate": 0.0}})
    assert main(["train", "sft", str(recipe), "--out", str(run)]) == 3
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "weights did not change" in errors[0] and "train-sft" in errors[0]
    assert common.stage_state(run / "sft") is None  # not marked trained: a rerun trains again


# ----------------------------------------------------------------------------- item 10: progress
def test_the_console_shows_a_training_stages_steps_and_loss(tmp_path, tiny_model_dir, prefect_harness, capsys):
    from rlaif.cli.main import main

    run = tmp_path / "run"
    write_dataset(run)
    recipe = write_recipe(tmp_path / "r.yaml", {"sft": {"model": tiny_model_dir, "max_steps": 2, **FAST}})
    assert main(["train", "sft", str(recipe), "--out", str(run)]) == 0
    err = capsys.readouterr().err
    # the progress line, as rich leaves it: label (status), bar, steps done of all, rate, elapsed, left
    assert re.search(r"^ *steps \(loss \d+\.\d+\) \S+ 2/2 ", err, re.M), err
