"""What the dSFT and dDPO stages share: the recipe fields, the TRL config, the model and the data.

Every hyperparameter a stage uses is a field here (and so a line in the recipe's YAML); any other
field of TRL's `SFTConfig` / `DPOConfig` goes through `args:` as is. The stages themselves
(training/sft.py, training/dpo.py) stay one readable function each.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger(__name__)


class LoraSpec(BaseModel):
    """A `lora:` block: train low-rank adapters (peft) instead of every weight; QLoRA with load_in_4bit."""

    model_config = ConfigDict(extra="forbid")

    r: int = Field(16, ge=1)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | str = "all-linear"  # peft's shorthand for every linear layer but the head
    load_in_4bit: bool = False  # QLoRA: the frozen base in 4-bit NF4 (bitsandbytes, CUDA only)


class StageSpec(BaseModel):
    """Fields both training stages take. Defaults suit a short CPU run; recipes set them all."""

    model_config = ConfigDict(extra="forbid")

    learning_rate: float = Field(gt=0)
    num_train_epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides epochs
    per_device_train_batch_size: int = Field(2, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    max_length: int | None = 512  # tokens of prompt + answer; longer rows are truncated
    warmup_steps: float = 0.1  # a float below 1 is a ratio of the total steps (transformers 5)
    lr_scheduler_type: str = "cosine"
    logging_steps: int = Field(1, ge=1)
    seed: int = 42
    attn_implementation: str | None = None  # e.g. flash_attention_2 (if installed); None: transformers' default (sdpa)
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~30% slower
    lora: LoraSpec | None = None  # None: full fine-tuning
    save_steps: int = Field(100, ge=1)  # a checkpoint every N optimizer steps (the unit `resume` restarts from)
    save_total_limit: int | None = 1  # checkpoints kept in the output dir
    resume: bool = False  # continue from the last checkpoint in the output dir, if there is one
    args: dict[str, Any] = Field(default_factory=dict)  # any other TRL config field, passed as is


def on_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def config_kwargs(spec: StageSpec, config_cls: type, out_dir: Path, extra: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments for TRL's `config_cls`, from the shared fields, the stage's own (`extra`)
    and the recipe's `args:`, which may not repeat a field the recipe has a line for."""
    gpu = on_gpu()
    kwargs = dict(
        output_dir=str(out_dir), learning_rate=spec.learning_rate, num_train_epochs=spec.num_train_epochs,
        max_steps=spec.max_steps, per_device_train_batch_size=spec.per_device_train_batch_size,
        gradient_accumulation_steps=spec.gradient_accumulation_steps, max_length=spec.max_length,
        warmup_steps=spec.warmup_steps, lr_scheduler_type=spec.lr_scheduler_type,
        logging_steps=spec.logging_steps, seed=spec.seed,
        gradient_checkpointing=spec.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if spec.gradient_checkpointing else None,
        save_strategy="steps", save_steps=spec.save_steps, save_total_limit=spec.save_total_limit,
        use_cpu=not gpu, bf16=gpu, report_to=[], **extra,
    )
    known = {f.name for f in dataclasses.fields(config_cls)}
    for key in spec.args:
        if key not in known:
            raise ValueError(f"args.{key}: not a field of TRL's {config_cls.__name__}")
        if key in kwargs and key not in ("bf16", "report_to", "save_strategy", "use_cpu"):
            raise ValueError(f"args.{key}: set it as its own recipe field, not under args")
    return {**kwargs, **spec.args}


def load_model(path: str, spec: StageSpec) -> Any:
    """The policy in float32 on CPU, bfloat16 on GPU, or 4-bit NF4 for QLoRA (GPU only)."""
    import torch
    from transformers import AutoModelForCausalLM

    gpu = on_gpu()
    kwargs: dict[str, Any] = {"dtype": torch.bfloat16 if gpu else torch.float32}
    if spec.attn_implementation:
        kwargs["attn_implementation"] = spec.attn_implementation
    if spec.lora is not None and spec.lora.load_in_4bit:
        if not gpu:
            raise ValueError("lora.load_in_4bit (QLoRA) needs a CUDA GPU and bitsandbytes; this machine has "
                             "no GPU: drop load_in_4bit to train plain LoRA adapters on CPU")
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16)
    return AutoModelForCausalLM.from_pretrained(path, **kwargs)


def peft_config(spec: StageSpec) -> Any:
    if spec.lora is None:
        return None
    from peft import LoraConfig

    return LoraConfig(r=spec.lora.r, lora_alpha=spec.lora.alpha, lora_dropout=spec.lora.dropout,
                      target_modules=spec.lora.target_modules, task_type="CAUSAL_LM")


def load_tokenizer(path: str, chat_template: str | None = None) -> Any:
    """The model's tokenizer; `chat_template` gives a base model one (saved with the output, so the
    next stage and vLLM use the same)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.chat_template is None:
        raise ValueError(f"{path}: the tokenizer has no chat template, which the conversational dataset "
                         f"needs: set train.sft.chat_template (a Jinja template) in the recipe")
    return tokenizer


def load_splits(dataset_dir: str | Path) -> Any:
    """The run's DatasetDict; `dataset_dir` may be a symlink to the latest version."""
    from datasets import load_from_disk

    path = Path(dataset_dir).resolve()
    if not path.exists():
        raise FileNotFoundError(f"{dataset_dir}: no dataset here; run the binarize stage first")
    return load_from_disk(str(path))


def last_checkpoint(out_dir: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(out_dir)) if out_dir.is_dir() else None


def train_and_save(trainer: Any, spec: StageSpec, out_dir: Path, tokenizer: Any) -> dict[str, Any]:
    """Train (from the last checkpoint when `resume`), then save a full model vLLM can load.

    With LoRA the adapter is saved to `out_dir/adapter` and merged into the base for `out_dir`, so the
    next stage and the evaluation load a plain model either way.
    """
    resume = last_checkpoint(out_dir) if spec.resume else None
    if spec.resume:
        log.info("resuming from %s", resume or "scratch (no checkpoint yet)")
    result = trainer.train(resume_from_checkpoint=resume)
    trainable = count_trainable(trainer.model)
    main = trainer.accelerator.is_main_process
    if spec.lora is None:
        trainer.save_model(str(out_dir))  # on every rank: under ZeRO-3 it gathers the shards
    else:
        trainer.save_model(str(out_dir / "adapter"))
        if main and not spec.lora.load_in_4bit:  # a 4-bit base is not merged: the adapter is the output
            merged = trainer.accelerator.unwrap_model(trainer.model).merge_and_unload()
            merged.save_pretrained(str(out_dir))
    if main:
        tokenizer.save_pretrained(str(out_dir))
        trainer.state.save_to_json(str(out_dir / "trainer_state.json"))
    return {"steps": result.global_step, "trainable_params": trainable, **result.metrics}


def count_trainable(model: Any) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
