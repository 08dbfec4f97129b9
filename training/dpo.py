"""dDPO: TRL's DPOTrainer on a binarized preference dataset, on top of a dSFT checkpoint.

Usage (as a stage of a recipe; see `rlaif run`):

    train_dpo(dataset_dir="runs/quickstart/dataset", spec=DPOSpec(model="smollm2-135m-instruct"),
              out_dir="runs/quickstart/dpo")

Supports: any model `generation.models.resolve_model` can load (bundled, local dir, hub id), every
`DPOConfig` field through `args:` in the recipe, CPU (use_cpu, float32) and GPU (bf16).
Assumes: the dataset has `train_prefs` (and optionally `test_prefs`) in TRL's conversational form
with an explicit prompt, as `judges.dataset` writes it; the model's tokenizer has a chat template.
The reference model is the starting policy, loaded by TRL from the same path unless one is given.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger(__name__)


class DPOSpec(BaseModel):
    """The recipe's `train: dpo:` block. Defaults are the Zephyr paper's beta with a short CPU run."""

    model_config = ConfigDict(extra="forbid")

    model: str  # the dSFT checkpoint to start from
    beta: float = 0.1
    learning_rate: float = 5e-7
    num_train_epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides epochs
    per_device_train_batch_size: int = 2
    gradient_accumulation_steps: int = 1
    max_length: int | None = 512
    loss_type: str = "sigmoid"
    warmup_steps: float = 0.1  # a float below 1 is a ratio of the total steps (transformers 5)
    lr_scheduler_type: str = "cosine"
    logging_steps: int = 1
    seed: int = 42
    args: dict[str, Any] = Field(default_factory=dict)  # any other DPOConfig field, passed as is


def train_dpo(dataset_dir: str | Path, spec: DPOSpec, out_dir: str | Path,
              model: Any = None, ref_model: Any = None) -> dict[str, Any]:
    """Train and save to `out_dir`; returns the final training metrics."""
    import torch
    from datasets import load_from_disk
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from generation.models import resolve_model

    #######
    # Setup
    #######
    cpu = not torch.cuda.is_available()
    args = DPOConfig(
        output_dir=str(out_dir), beta=spec.beta, learning_rate=spec.learning_rate,
        num_train_epochs=spec.num_train_epochs, max_steps=spec.max_steps,
        per_device_train_batch_size=spec.per_device_train_batch_size,
        gradient_accumulation_steps=spec.gradient_accumulation_steps, max_length=spec.max_length,
        loss_type=[spec.loss_type], warmup_steps=spec.warmup_steps,
        lr_scheduler_type=spec.lr_scheduler_type, logging_steps=spec.logging_steps, seed=spec.seed,
        use_cpu=cpu, bf16=not cpu, report_to=[], save_strategy="no",
        **spec.args,
    )

    ###############
    # Load datasets
    ###############
    data = load_from_disk(str(dataset_dir))
    train = data["train_prefs"]
    if len(train) == 0:
        raise ValueError(f"{dataset_dir}: train_prefs is empty; nothing to train on")

    #######
    # Model
    #######
    path = resolve_model(spec.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model is None:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32 if cpu else torch.bfloat16)

    ##########
    # Training
    ##########
    trainer = DPOTrainer(model=model, ref_model=ref_model, args=args, train_dataset=train,
                         processing_class=tokenizer)
    result = trainer.train()
    trainer.save_model(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    trainer.state.save_to_json(str(Path(out_dir) / "trainer_state.json"))
    log.info("dDPO checkpoint saved to %s", out_dir)
    return {"steps": result.global_step, **result.metrics}
