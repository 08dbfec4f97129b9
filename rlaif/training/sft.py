"""dSFT: distilled supervised fine-tuning on the teacher's best completions (TRL's SFTTrainer).

Usage:

    rlaif train sft recipes/quickstart.yaml            # writes runs/<name>/sft
    train_sft(dataset_dir="runs/quickstart/dataset",
              spec=SFTSpec(model="smollm2-135m-instruct", learning_rate=2e-5), out_dir="runs/quickstart/sft")

Supports: any model `rlaif.engines.models.resolve_model` can load (bundled, local dir, hub id);
every field of TRL's `SFTConfig` as a key of the block (learning_rate, num_train_epochs, max_steps,
max_length, packing, gradient_checkpointing, ...); full fine-tuning, LoRA and QLoRA (`lora:`,
`lora.load_in_4bit`, GPU only) through peft; bf16 on GPU, float32 on CPU; checkpoints every
`save_steps` and `resume: true` to continue from the last one; several GPUs through
`accelerate launch` (see recipes/zephyr-7b-beta/).
Assumes: the run's dataset (or `dataset:`) has `train_sft` in TRL's conversational prompt-completion
form (`prompt` = the messages up to the last user turn, `completion` = the assistant's answer), so
the loss is on the answer only, or whole `messages` conversations; without `train_sft` the chosen
answers of `train_prefs` are used. The tokenizer has a chat template, or `chat_template:` gives one.
The output dir holds a full model (LoRA adapters merged; the adapter in `adapter/`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, ClassVar

from rlaif.core.errors import ConfigError
from rlaif.training.common import StageSpec

log = logging.getLogger(__name__)


class SFTSpec(StageSpec):
    """The recipe's `train: sft:` block: TRL's SFTConfig fields, plus ours."""

    TRL_CLASS: ClassVar[str] = "SFTConfig"
    DEFAULTS: ClassVar[dict[str, Any]] = {**StageSpec.DEFAULTS, "learning_rate": 2e-5, "max_length": 1024}

    model: str  # the base model to fine-tune
    chat_template: str | None = None  # Jinja chat template for a base model that has none


def sft_rows(spec: SFTSpec, dataset_dir: str | Path) -> Any:
    """`train_sft` as prompt + completion (loss on the answer), or as whole `messages` conversations
    (loss on every token, as UltraChat is used in the Zephyr recipe); without `train_sft`, the chosen
    answers of `train_prefs`."""
    from rlaif.training.common import load_splits

    if spec.dataset is None:
        data = load_splits(dataset_dir)
    elif spec.dataset.startswith("hf:"):
        from datasets import load_dataset

        data = load_dataset(spec.dataset[3:])
    else:
        data = load_splits(spec.dataset)
    if "train_sft" in data:
        split = data["train_sft"]
        if {"prompt", "completion"} <= set(split.column_names):
            return split.select_columns(["prompt", "completion"])
        if "messages" in split.column_names:
            return split.select_columns(["messages"])
        raise ConfigError(f"{spec.dataset or dataset_dir}: train_sft has neither prompt + completion nor messages "
                          f"(columns: {split.column_names})")
    log.info("no train_sft split: dSFT on the chosen answers of train_prefs")
    return data["train_prefs"].select_columns(["prompt", "chosen"]).rename_column("chosen", "completion")


def train_sft(dataset_dir: str | Path, spec: SFTSpec, out_dir: str | Path) -> dict[str, Any]:
    """Fine-tune `spec.model` on the run's SFT split and save it to `out_dir`; returns the metrics."""
    from trl import SFTConfig, SFTTrainer

    from rlaif.engines.models import resolve_model
    from rlaif.training import common

    #######
    # Setup
    #######
    out_dir = Path(out_dir)
    args = common.trl_config(spec, SFTConfig, out_dir, "train.sft")

    #######
    # Model
    #######
    path = resolve_model(spec.model)
    tokenizer = common.load_tokenizer(path, spec.chat_template)
    model = common.load_model(path, spec)

    #########
    # Dataset
    #########
    train = sft_rows(spec, dataset_dir)
    if len(train) == 0:
        raise ConfigError(f"{dataset_dir}: the SFT split is empty; nothing to train on")

    ##########
    # Training
    ##########
    trainer = SFTTrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer,
                         peft_config=common.peft_config(spec))
    metrics = common.train_and_save(trainer, spec, out_dir, tokenizer)
    log.info("dSFT model saved to %s (%d steps)", out_dir, metrics["steps"])
    return metrics
