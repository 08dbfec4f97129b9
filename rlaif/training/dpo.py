"""dDPO: distilled DPO (TRL's DPOTrainer) on the binarized preferences, from the dSFT checkpoint.

Usage:

    rlaif train dpo recipes/quickstart.yaml            # writes runs/<name>/dpo
    train_dpo(dataset_dir="runs/quickstart/dataset", spec=DPOSpec(), out_dir="runs/quickstart/dpo")

Supports: starting from the run's dSFT output (`model:` unset: `<run>/sft`, next to `out_dir`) or
any model `rlaif.engines.models.resolve_model` can load; every field of TRL's `DPOConfig` as a key
of the block: beta, every DPO loss TRL offers through `loss_type` (sigmoid, ipo, hinge, robust, ...,
or a list combined with `loss_weights`), `precompute_ref_log_probs` (reference log-probs computed
once before training, which frees the reference model's memory), gradient checkpointing, ...; LoRA
and QLoRA through peft (the reference is then the policy with adapters off, so no second copy; the
output is the adapter merged into the unquantized base, a plain model); on GPU float32 weights with
bf16 compute (bf16 weights for LoRA, QLoRA and DeepSpeed), float32 on CPU; checkpoints every
`save_steps`, from which a rerun of the same inputs continues; several GPUs through
`accelerate launch` (see recipes/zephyr-7b-beta/). Starting from a LoRA or QLoRA dSFT works like
any other: its output dir holds a merged plain model.
Data: `dataset:` unset trains on the run's own dataset, else a local dataset or `hf:<id>` (e.g.
hf:HuggingFaceH4/ultrafeedback_binarized), split `dataset_split` (default `train_prefs`, else
`train`). Any layout `rlaif.training.datasets.load_preferences` knows is mapped to TRL's explicit
conversational form (`prompt` = messages up to the last user turn, `chosen` / `rejected` = one
assistant message each, as rlaif.preferences writes it) and named in the log; TRL 1.16's
DPOTrainer fails on ultrafeedback_binarized as published. With TRL's `eval_strategy` set, the
matching `test_*` split is the eval dataset, as in the handbook.
Assumes: the reference model is the starting policy unless `ref_model` is given in memory.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, ClassVar

from rlaif.core.errors import ConfigError
from rlaif.core.progress import NULL, Reporter
from rlaif.training.common import StageSpec

log = logging.getLogger(__name__)


class DPOSpec(StageSpec):
    """The recipe's `train: dpo:` block: TRL's DPOConfig fields, plus ours."""

    TRL_CLASS: ClassVar[str] = "DPOConfig"
    SPLIT: ClassVar[str] = "train_prefs"
    # beta: the Zephyr paper's (the handbook's later recipe uses 0.01); learning rate: the handbook's
    DEFAULTS: ClassVar[dict[str, Any]] = {**StageSpec.DEFAULTS, "beta": 0.1, "learning_rate": 5e-7, "max_length": 512}


def start_model(spec: DPOSpec, out_dir: Path) -> str:
    """The model dDPO starts from: the recipe's, else the dSFT output of the same run."""
    from rlaif.engines.models import resolve_model

    if spec.model is not None:
        return resolve_model(spec.model)
    sft = out_dir.parent / "sft"
    if not (sft / "config.json").exists():
        raise ConfigError(f"train.dpo.model is unset, so dDPO starts from this run's dSFT model, but "
                          f"{sft} has none: run `rlaif train sft` first or set train.dpo.model")
    return str(sft)


def dpo_config(spec: DPOSpec, out_dir: Path) -> tuple[DPOSpec, Any]:
    """TRL's DPOConfig for the block (the preflight builds it too, before any compute)."""
    from trl import DPOConfig

    from rlaif.training import common

    if isinstance(spec.get("loss_type"), str):  # TRL takes a list (several losses, weighted)
        spec = spec.model_copy(update={"loss_type": [spec.get("loss_type")]})
    return spec, common.trl_config(spec, DPOConfig, out_dir, "train.dpo")


def train_dpo(dataset_dir: str | Path, spec: DPOSpec, out_dir: str | Path, model: Any = None,
              ref_model: Any = None, inputs: str | None = None, reporter: Reporter = NULL) -> dict[str, Any]:
    """Train and save to `out_dir`; returns the final training metrics, the model it started from and
    the beta it trained with. `inputs` and `reporter` as for `train_sft`."""
    from trl import DPOTrainer

    from rlaif.training import common
    from rlaif.training.datasets import load_preferences
    from rlaif.training.progress import StepProgress

    #######
    # Setup
    #######
    out_dir = Path(out_dir)
    spec, args = dpo_config(spec, out_dir)

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
    split, eval_split = spec.splits()
    train = load_preferences(spec.dataset, split, dataset_dir)
    if len(train) == 0:
        raise ConfigError(f"{spec.dataset or dataset_dir}: {split} is empty; nothing to train on")
    evaluation = load_preferences(spec.dataset, eval_split, dataset_dir) if eval_split else None

    ##########
    # Training
    ##########
    trainer = DPOTrainer(model=model, ref_model=ref_model, args=args, train_dataset=train, eval_dataset=evaluation,
                         processing_class=tokenizer, peft_config=common.peft_config(spec),
                         callbacks=[StepProgress(reporter)])
    metrics = common.train_and_save(trainer, spec, out_dir, tokenizer, path, inputs)
    log.info("dDPO model saved to %s (%d steps, from %s)", out_dir, metrics["steps"], path)
    # rows: the pairs the closing table counts in; beta: recorded with the model (evaluate reads it)
    return {**metrics, "start_model": path, "rows": len(train), "beta": args.beta}
