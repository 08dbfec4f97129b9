"""dDPO: distilled DPO (TRL's DPOTrainer) on the binarized preferences, from the dSFT checkpoint.

Usage:

    rlaif train dpo recipes/quickstart.yaml            # writes runs/<name>/dpo
    train_dpo(dataset_dir="runs/quickstart/dataset", spec=DPOSpec(), out_dir="runs/quickstart/dpo")

Supports: starting from the run's dSFT output (`model:` unset: `<run>/sft`, next to `out_dir`) or
any model `generation.models.resolve_model` can load; every DPO loss TRL offers through `loss_type`
(sigmoid, ipo, hinge, robust, ..., or a list combined with `args: {loss_weights: [...]}`); LoRA and
QLoRA through peft (the reference is then the policy with adapters off, so no second copy);
reference log-probs computed once before training (`precompute_ref_log_probs`), which frees the
reference model's memory during training; gradient checkpointing; bf16 on GPU, float32 on CPU;
checkpoints every `save_steps` and `resume: true`; every other `DPOConfig` field through `args:`;
several GPUs through `accelerate launch` (see recipes/zephyr-7b-beta/).
Assumes: `train_prefs` in TRL's conversational form with an explicit prompt (`prompt` = messages up
to the last user turn, `chosen` / `rejected` = one assistant message each), as judges.dataset
writes it. The reference model is the starting policy unless `ref_model` is given in memory.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pydantic import Field

from training.common import StageSpec

log = logging.getLogger(__name__)


class DPOSpec(StageSpec):
    """The recipe's `train: dpo:` block."""

    model: str | None = None  # None: the same run's dSFT output, <run>/sft
    beta: float = Field(0.1, gt=0)  # the Zephyr paper's beta (the handbook's later recipe uses 0.01)
    learning_rate: float = Field(5e-7, gt=0)  # the alignment-handbook's Zephyr dDPO learning rate
    loss_type: str | list[str] = "sigmoid"  # any of TRL's DPO losses, or several (weights in args)
    precompute_ref_log_probs: bool = False


def start_model(spec: DPOSpec, out_dir: Path) -> str:
    """The model dDPO starts from: the recipe's, else the dSFT output of the same run."""
    from generation.models import resolve_model

    if spec.model is not None:
        return resolve_model(spec.model)
    sft = out_dir.parent / "sft"
    if not (sft / "config.json").exists():
        raise FileNotFoundError(f"train.dpo.model is unset, so dDPO starts from this run's dSFT model, but "
                                f"{sft} has none: run `rlaif train sft` first or set train.dpo.model")
    return str(sft)


def train_dpo(dataset_dir: str | Path, spec: DPOSpec, out_dir: str | Path,
              model: Any = None, ref_model: Any = None) -> dict[str, Any]:
    """Train and save to `out_dir`; returns the final training metrics."""
    from trl import DPOConfig, DPOTrainer

    from training import common

    #######
    # Setup
    #######
    out_dir = Path(out_dir)
    losses = [spec.loss_type] if isinstance(spec.loss_type, str) else list(spec.loss_type)
    args = DPOConfig(**common.config_kwargs(spec, DPOConfig, out_dir, {
        "beta": spec.beta, "loss_type": losses, "precompute_ref_log_probs": spec.precompute_ref_log_probs}))

    #######
    # Model
    #######
    path = start_model(spec, out_dir)
    tokenizer = common.load_tokenizer(path)
    if model is None:
        model = common.load_model(path, spec)

    #########
    # Dataset
    #########
    train = common.load_splits(dataset_dir)["train_prefs"].select_columns(["prompt", "chosen", "rejected"])
    if len(train) == 0:
        raise ValueError(f"{dataset_dir}: train_prefs is empty; nothing to train on")

    ##########
    # Training
    ##########
    trainer = DPOTrainer(model=model, ref_model=ref_model, args=args, train_dataset=train,
                         processing_class=tokenizer, peft_config=common.peft_config(spec))
    metrics = common.train_and_save(trainer, spec, out_dir, tokenizer)
    if trainer.accelerator.is_main_process:
        (out_dir / "start_model.txt").write_text(path + "\n")  # what evaluate compares against
    log.info("dDPO model saved to %s (%d steps, from %s)", out_dir, metrics["steps"], path)
    return metrics
