"""dSFT: distilled supervised fine-tuning on the teacher's best completions (TRL's SFTTrainer).

Usage:

    rlaif train sft recipes/quickstart.yaml            # writes runs/<name>/sft
    train_sft(dataset_dir="runs/quickstart/dataset",
              spec=SFTSpec(model="smollm2-135m-instruct", learning_rate=2e-5), out_dir="runs/quickstart/sft")

Supports: any model `rlaif.engines.models.resolve_model` can load (bundled, local dir, hub id);
every field of TRL's `SFTConfig` as a key of the block (learning_rate, num_train_epochs, max_steps,
max_length, packing, gradient_checkpointing, ...); full fine-tuning, LoRA and QLoRA (`lora:`,
`lora.load_in_4bit`, GPU only) through peft; on GPU float32 weights with bf16 compute (bf16 weights
for LoRA, QLoRA and DeepSpeed), float32 on CPU; checkpoints every `save_steps`, from which a rerun
of the same inputs continues; several GPUs through `accelerate launch` (see recipes/zephyr-7b-beta/).
Data: `dataset:` unset trains on the run's own dataset, else a local dataset or `hf:<id>`, split
`dataset_split` (default `train_sft`; without it the chosen answers of `train_prefs`, else `train`).
Any layout `rlaif.training.datasets.load_sft` knows is mapped to TRL's conversational form (and
named in the log): prompt + completion (the loss on the answer only) or whole `messages`
conversations (loss on every turn, as Zephyr's dSFT on UltraChat). With TRL's `eval_strategy` set,
the matching `test_*` split is the eval dataset, as in the handbook.
Assumes: the tokenizer has a chat template, or `chat_template:` gives one.
The output dir holds a full model (LoRA and QLoRA adapters merged into the unquantized base; the
adapter in `adapter/`). Steps and loss show on the command's progress display (`reporter`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, ClassVar

from rlaif.core.errors import ConfigError
from rlaif.core.progress import NULL, Reporter
from rlaif.training.common import StageSpec

log = logging.getLogger(__name__)


class SFTSpec(StageSpec):
    """The recipe's `train: sft:` block: TRL's SFTConfig fields, plus ours."""

    TRL_CLASS: ClassVar[str] = "SFTConfig"
    SPLIT: ClassVar[str] = "train_sft"
    DEFAULTS: ClassVar[dict[str, Any]] = {**StageSpec.DEFAULTS, "learning_rate": 2e-5, "max_length": 1024}

    model: str  # the base model to fine-tune
    chat_template: str | None = None  # Jinja chat template for a base model that has none


def train_sft(dataset_dir: str | Path, spec: SFTSpec, out_dir: str | Path, inputs: str | None = None,
              reporter: Reporter = NULL) -> dict[str, Any]:
    """Fine-tune `spec.model` on the SFT split and save it to `out_dir`; returns the metrics and the
    model it started from (as the recipe names it). `inputs`: what the stage is trained from (the
    flow's hash), which says which checkpoints in `out_dir` may be resumed (common.resume_point)."""
    from trl import SFTConfig, SFTTrainer

    from rlaif.engines.models import resolve_model
    from rlaif.training import common
    from rlaif.training.datasets import load_sft
    from rlaif.training.progress import StepProgress

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
    split, eval_split = spec.splits()
    train = load_sft(spec.dataset, split, dataset_dir)
    if len(train) == 0:
        raise ConfigError(f"{spec.dataset or dataset_dir}: the SFT split {split} is empty; nothing to train on")
    evaluation = load_sft(spec.dataset, eval_split, dataset_dir) if eval_split else None

    ##########
    # Training
    ##########
    trainer = SFTTrainer(model=model, args=args, train_dataset=train, eval_dataset=evaluation,
                         processing_class=tokenizer, peft_config=common.peft_config(spec),
                         callbacks=[StepProgress(reporter)])
    metrics = common.train_and_save(trainer, spec, out_dir, tokenizer, path, inputs)
    log.info("dSFT model saved to %s (%d steps)", out_dir, metrics["steps"])
    return {**metrics, "start_model": spec.model, "rows": len(train)}  # rows: what the closing table counts in
