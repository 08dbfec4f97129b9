"""What the dSFT and dDPO stages share: the recipe block, TRL's config, the model, the data, the state.

A recipe's `train.sft` / `train.dpo` block is TRL's own `SFTConfig` / `DPOConfig`, as the
alignment-handbook passes YAML to TRL: every key is a TRL field name, declared nowhere else, plus a
few of ours that are not training arguments:

    model               what to train (dDPO: default this run's dSFT output)
    dataset             the run's dataset (default), a local dataset (a saved dir, a folder of
                        parquet/jsonl/csv files, one such file), or hf:<id>; any known layout
                        (training/datasets.py), mapped to TRL's explicit conversational form
    dataset_split       the split to train on (default train_sft / train_prefs, else `train`)
    lora                LoRA adapters through peft ({r, alpha, dropout, target_modules, load_in_4bit})
    chat_template       (dSFT) a Jinja chat template for a base model that has none
    attn_implementation how transformers loads the model (e.g. flash_attention_2)
    resume              (library calls) continue from the last checkpoint in the output dir; a stage
                        that rlaif runs resumes a cut-short try of the same inputs by itself and
                        never a checkpoint of other inputs, whatever this says
    keep_checkpoints    keep the trainer's checkpoints once a stage that rlaif runs is trained (by
                        default they are removed then: each holds the optimizer's state, twice the
                        weights again, and a finished stage never resumes from them); not hashed

A key that is neither ours nor a field of TRL's config is an error naming the file and the field.
The names are checked against a table of TRL's fields cached per TRL version under
`$RLAIF_HOME/cache/` (reading TRL's classes imports torch, which a recipe check should not pay for
on every command); TRL itself checks the values when the stage builds its config, before any model
loads. `DEFAULTS` are the values we use where a recipe says nothing; `output_dir`, `use_cpu`,
`bf16` and `report_to` are set for the machine: on a GPU full fine-tuning keeps float32 weights and
computes in bf16 (training/weights.py says why).

A stage's output folder says whether it is done: `rlaif-stage.json`, written last, holds the hash
of what the stage was trained from (and dDPO's beta, which `rlaif evaluate` reads); a rerun with the same inputs finds it and trains nothing.
`rlaif-started.json`, written when training starts, says what the checkpoints beside it are of: a
rerun with the same inputs resumes from them, one with other inputs removes them and starts over.
A stage fails (exit 3, no `rlaif-stage.json`) when training left its weights where they were.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, model_serializer

from rlaif.core.errors import EXIT_STAGE, ConfigError, RlaifError
from rlaif.core.records import without_unset
from rlaif.core.store import write_json

log = logging.getLogger(__name__)
STATE = "rlaif-stage.json"
STARTED = "rlaif-started.json"  # written before training: what the checkpoints in the folder are of
# settings a stage returns beside its metrics that the model's users need (evaluate: the implicit
# reward is dDPO's beta times its log-ratio; a sweep's report names the loss), recorded in the state
# beside the metrics, not among them
TRAINED_WITH = ("beta", "loss_type")


class WeightsUnchanged(RlaifError):
    """Training ran and left the weights where they were: the stage failed, whatever TRL reported."""

    exit_code = EXIT_STAGE


class LoraSpec(BaseModel):
    """A `lora:` block: train low-rank adapters (peft) instead of every weight; QLoRA with load_in_4bit."""

    model_config = ConfigDict(extra="forbid")

    r: int = Field(16, ge=1)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | str = "all-linear"  # peft's shorthand for every linear layer but the head
    load_in_4bit: bool = False  # QLoRA: the frozen base in 4-bit NF4 (bitsandbytes, CUDA only)


class StageSpec(BaseModel):
    """Our keys of a training block; every other key is a field of TRL's config class."""

    model_config = ConfigDict(extra="allow")

    TRL_CLASS: ClassVar[str] = ""
    SPLIT: ClassVar[str] = ""  # the split trained on unless `dataset_split` names another
    DEFAULTS: ClassVar[dict[str, Any]] = {
        "num_train_epochs": 1, "per_device_train_batch_size": 2, "gradient_accumulation_steps": 1,
        "warmup_steps": 0.1,  # a float below 1 is a ratio of the total steps (transformers 5)
        "lr_scheduler_type": "cosine", "logging_steps": 1, "seed": 42,
        "save_strategy": "steps", "save_steps": 100, "save_total_limit": 1,
    }
    MACHINE: ClassVar[tuple[str, ...]] = ("output_dir", "use_cpu", "bf16")  # set for the machine, never by a recipe

    model: str | None = None
    dataset: str | None = None
    dataset_split: str | None = None
    lora: LoraSpec | None = None
    attn_implementation: str | None = None
    resume: bool = False
    keep_checkpoints: bool | None = None  # None: removed once the stage is trained (not hashed: see the serializer)

    UNSET: ClassVar[tuple[str, ...]] = ("keep_checkpoints",)  # dumped only when set (core.records.without_unset)

    @model_serializer(mode="wrap")
    def _without_unset(self, handler: Any) -> dict[str, Any]:
        """Fields added after stages were trained are left out of the dump (and so of the hash that
        says a stage is trained) when a block does not set them."""
        return without_unset(handler(self), *self.UNSET)

    def trl(self) -> dict[str, Any]:
        """The TRL config fields this block sets, over our defaults."""
        return {**self.DEFAULTS, **(self.model_extra or {})}

    def get(self, name: str, default: Any = None) -> Any:
        return self.trl().get(name, default)

    def splits(self) -> tuple[str, str | None]:
        """(the split trained on, the held-out split evaluated on during training or None), as the
        handbook: `train_*` / `test_*`, the latter only when TRL's `eval_strategy` asks for it."""
        train = self.dataset_split or self.SPLIT
        strategy = self.get("eval_strategy", "no")  # YAML reads a bare `no` as False
        evaluates = strategy not in (None, False) and str(getattr(strategy, "value", strategy)).lower() != "no"
        return train, (train.replace("train", "test", 1) if "train" in train else "test") if evaluates else None


def trl_fields(class_name: str) -> set[str]:
    """The field names of TRL's `class_name`, from a table cached per TRL version."""
    from importlib.metadata import version

    from rlaif.engines.models import rlaif_home

    path = rlaif_home() / "cache" / f"trl-{version('trl')}-fields.json"
    try:
        table = json.loads(path.read_text())
    except (OSError, ValueError):
        import trl

        table = {name: sorted(f.name for f in dataclasses.fields(getattr(trl, name))) for name in ("SFTConfig", "DPOConfig")}
        write_json(path, table)
    return set(table[class_name])


def unknown_fields(spec: StageSpec) -> list[str]:
    """Keys of a training block that are neither ours nor TRL's."""
    known = trl_fields(spec.TRL_CLASS)
    return sorted(k for k in (spec.model_extra or {}) if k not in known or k in spec.MACHINE)


def on_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def trl_config(spec: StageSpec, config_cls: type, out_dir: Path, where: str) -> Any:
    """TRL's config object for the block, set for this machine; `where` names the block in errors."""
    gpu = on_gpu()
    kwargs = {"report_to": [], **spec.trl(), "output_dir": str(out_dir), "use_cpu": not gpu, "bf16": gpu}
    if kwargs.get("gradient_checkpointing") and "gradient_checkpointing_kwargs" not in kwargs:
        kwargs["gradient_checkpointing_kwargs"] = {"use_reentrant": False}
    unknown = [k for k in kwargs if k not in {f.name for f in dataclasses.fields(config_cls)}]
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: not a field of TRL's {config_cls.__name__}")
    try:
        return config_cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: TRL's {config_cls.__name__} rejected the settings: {e}") from None


def load_model(path: str, spec: StageSpec) -> Any:
    """The policy in float32 (on GPU too, for full fine-tuning), bfloat16 on GPU for LoRA and under
    DeepSpeed, or 4-bit NF4 for QLoRA (GPU only): `weights.weights_dtype`."""
    import torch
    from transformers import AutoModelForCausalLM

    from rlaif.training.weights import weights_dtype

    gpu = on_gpu()
    kwargs: dict[str, Any] = {"dtype": weights_dtype(spec, gpu)}
    if spec.attn_implementation:
        kwargs["attn_implementation"] = spec.attn_implementation
    if spec.lora is not None and spec.lora.load_in_4bit:
        if not gpu:
            raise ConfigError("lora.load_in_4bit (QLoRA) needs a CUDA GPU and bitsandbytes; this machine has "
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
        raise ConfigError(f"{path}: the tokenizer has no chat template, which the conversational dataset "
                          f"needs: set train.sft.chat_template (a Jinja template) in the recipe")
    return tokenizer


def load_splits(dataset_dir: str | Path) -> Any:
    """A saved DatasetDict; `dataset_dir` may be a symlink to the run's latest version."""
    from datasets import load_from_disk

    path = Path(dataset_dir).resolve()
    if not path.exists():
        raise ConfigError(f"{dataset_dir}: no dataset here; run the binarize stage first")
    return load_from_disk(str(path))


def last_checkpoint(out_dir: Path) -> str | None:
    """The newest complete checkpoint. The trainer writes `trainer_state.json` last, so a checkpoint
    without it was cut short (a kill mid-save): it is removed, and training resumes from the one before."""
    import re
    import shutil

    if not out_dir.is_dir():
        return None
    found = sorted((int(m.group(1)), p) for p in out_dir.iterdir()
                   if p.is_dir() and (m := re.fullmatch(r"checkpoint-(\d+)", p.name)))
    for _, path in reversed(found):
        if (path / "trainer_state.json").exists():
            return str(path)
        log.warning("removing %s: a checkpoint cut short", path)
        shutil.rmtree(path, ignore_errors=True)
    return None


def drop_finished_checkpoints(out_dir: str | Path, spec: StageSpec) -> None:
    """Once a stage is marked trained, its checkpoints (weights plus the optimizer's state, about three
    times the model) serve nothing: a rerun finds the stage trained. Removed unless the block says
    `keep_checkpoints: true`; by the first process of a launch."""
    import shutil

    from rlaif.training.launch import is_main

    out_dir = Path(out_dir)
    if spec.keep_checkpoints or not is_main() or not out_dir.is_dir():
        return
    for path in sorted(out_dir.glob("checkpoint-*")):
        if path.is_dir():
            log.info("removing %s: the stage is trained (keep_checkpoints: true keeps them)", path)
            shutil.rmtree(path, ignore_errors=True)


def drop_checkpoints(out_dir: Path) -> None:
    """Remove the checkpoints in `out_dir`: they were trained from other inputs (or unknown ones)."""
    import shutil

    for path in sorted(out_dir.glob("checkpoint-*")) if out_dir.is_dir() else ():
        log.warning("removing %s: a checkpoint of other inputs (the block, the data or the start model changed)", path)
        shutil.rmtree(path, ignore_errors=True)


def resume_point(trainer: Any, spec: StageSpec, out_dir: Path, inputs: str | None) -> str | None:
    """The checkpoint to continue from. A stage run by rlaif (`inputs` given): the last one of an
    earlier try with the same inputs that was cut short (killed, or the machine went down), whatever
    the recipe says; checkpoints of other inputs are removed, never resumed (resuming a finished run
    of other data would train nothing and mark the new inputs trained). A library call without
    `inputs`: the last checkpoint in the folder when `spec.resume`.

    Every process of a launch reads the marker before the first one rewrites it, so all of them
    make the same choice."""
    if inputs is None:
        return last_checkpoint(out_dir) if spec.resume else None
    marker = out_dir / STARTED
    try:
        same = json.loads(marker.read_text()).get("inputs") == inputs
    except (OSError, ValueError):
        same = False
    accelerator = trainer.accelerator
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if not same:
            drop_checkpoints(out_dir)
        write_json(marker, {"inputs": inputs})
    accelerator.wait_for_everyone()
    found = last_checkpoint(out_dir) if same else None
    if found:
        log.info("an earlier try with the same inputs was cut short: resuming from %s", found)
    return found


def train_and_save(trainer: Any, spec: StageSpec, out_dir: Path, tokenizer: Any, base: str,
                   inputs: str | None = None) -> dict[str, Any]:
    """Train (resuming as `resume_point` says), check that the weights moved, then save a full model
    that the next stage, `rlaif evaluate` and vLLM load.

    With LoRA or QLoRA the adapter is saved to `out_dir/adapter` and merged into the base (`base`,
    reloaded unquantized) for `out_dir`, so the next stage and the evaluation load a plain model
    whatever the stage trained.
    """
    from rlaif.training.weights import MIN_MOVED, Sample, merge_adapter

    resume = resume_point(trainer, spec, out_dir, inputs)
    sample = Sample.of(trainer.model)
    result = trainer.train(resume_from_checkpoint=resume)
    moved = sample.moved(trainer.model)
    log.info("training moved %.1f%% of the sampled trainable weights", 100 * moved)
    if moved < MIN_MOVED:
        raise WeightsUnchanged(
            f"the weights did not change: {moved:.1%} of the sampled trainable weights moved in "
            f"{result.global_step} steps at learning_rate {spec.get('learning_rate')}; the stage is not marked trained")
    trainable = count_trainable(trainer.model)
    main = trainer.accelerator.is_main_process
    if spec.lora is None:
        trainer.save_model(str(out_dir))  # on every rank: under ZeRO-3 it gathers the shards
    else:
        trainer.save_model(str(out_dir / "adapter"))
        if main:
            merge_adapter(base, out_dir / "adapter", out_dir)
    if main:
        tokenizer.save_pretrained(str(out_dir))
        trainer.state.save_to_json(str(out_dir / "trainer_state.json"))
    return {"steps": result.global_step, "trainable_params": trainable, "resumed_from": resume, **result.metrics}


def count_trainable(model: Any) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ----------------------------------------------------------------------------- the stage's own state
def stage_state(out_dir: str | Path) -> dict | None:
    """What the output folder was trained from, or None if it holds no finished training."""
    try:
        return json.loads((Path(out_dir) / STATE).read_text())
    except (OSError, ValueError):
        return None


def is_trained(out_dir: str | Path, inputs: str) -> bool:
    state = stage_state(out_dir)
    return state is not None and state.get("inputs") == inputs


def mark_trained(out_dir: str | Path, inputs: str, metrics: dict[str, Any], **extra: Any) -> None:
    """Written last: the stage is done for these inputs (by the first process of a launch, saying how
    many trained it)."""
    from rlaif.training.launch import is_main, world_size

    if not is_main():
        return
    numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and k not in TRAINED_WITH}
    settings = {k: metrics[k] for k in TRAINED_WITH if k in metrics}
    write_json(Path(out_dir) / STATE, {"inputs": inputs, "metrics": numbers, "processes": world_size(),
                                       **settings, **extra})
