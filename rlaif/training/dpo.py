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
Reference log-probs: with `precompute_ref_log_probs` they are kept by content under the run
(`<run>/ref_logps/`, training/reference.py), so a rerun, or another variant on the same data, reads
them and never runs the reference model.
Variants (a sweep): `variants: [{name: ipo-0.1, loss_type: ipo, beta: 0.1}, ...]` trains each
variant, the block with its overrides (TRL fields only), from the same start model into
`dpo/<name>/`, each its own stage (resumed and cached alone), all reading one reference pass.
Assumes: the reference model is the starting policy (its log-probs computed once and kept, or the
policy with adapters off under LoRA).
"""

from __future__ import annotations

import logging
from pathlib import Path
import re
from typing import Any, ClassVar

from pydantic import field_validator

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

    # named overrides of this block, each trained into dpo/<name>/ from one reference pass
    variants: list[dict[str, Any]] | None = None
    # the reference model, when it is not the start model (an on-policy round from the last round's model,
    # held to the dSFT model: flows/rounds.py); unset: the start model, as TRL does
    ref_model: str | None = None

    @field_validator("variants")
    @classmethod
    def _plain_unique_names(cls, variants: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        if variants is None:
            return None
        if not variants:
            raise ValueError("an empty list: give at least one {name: ..., <DPOConfig field>: ...} or drop variants")
        seen: set[str] = set()
        for i, v in enumerate(variants):
            name = v.get("name") if isinstance(v, dict) else None
            if not isinstance(name, str) or not VARIANT_NAME.fullmatch(name) or name in RESERVED:
                raise ValueError(f"variant {i}: name {name!r} must be a plain folder name (letters, digits, "
                                 f"'.', '_', '-'; starting with a letter or digit; not {'/'.join(RESERVED)})")
            if name.startswith("checkpoint-"):
                raise ValueError(f"variant {i}: name {name!r} looks like a trainer checkpoint; choose another")
            if name in seen:
                raise ValueError(f"variant names must be unique, {name!r} is given twice")
            seen.add(name)
        return variants

    # no `variants` / `ref_model` key when unset: a block dumps (and hashes, so a trained stage stays
    # trained) as it did before they existed
    UNSET: ClassVar[tuple[str, ...]] = (*StageSpec.UNSET, "variants", "ref_model")

    def variant_specs(self) -> list[tuple[str, DPOSpec]]:
        """(name, the block with the variant's overrides) for each variant; every one computes its
        reference log-probs in one pass before training (precompute_ref_log_probs), so they share it."""
        base = self.model_dump(exclude_unset=True, exclude={"variants"})
        return [(v["name"], DPOSpec.model_validate({**base, "precompute_ref_log_probs": True,
                                                    **{k: x for k, x in v.items() if k != "name"}}))
                for v in self.variants or ()]


VARIANT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
RESERVED = ("adapter", "runs")  # folders the trainer writes inside dpo/
SHARED = ("model", "dataset", "dataset_split", "lora", "attn_implementation", "resume", "ref_model")  # ours: one for all variants
NOT_IN_A_SWEEP = {"precompute_ref_log_probs": False, "sync_ref_model": True}  # would not share the reference pass


def variant_problems(spec: DPOSpec, trl_fields: set[str]) -> list[tuple[str, str, str]]:
    """(variant, field, problem) for each override a variant may not make: a key that is no field of
    TRL's DPOConfig, one of ours that every variant shares, or a setting that defeats the shared pass."""
    found = []
    for v in spec.variants or ():
        for k, value in v.items():
            if k == "name":
                continue
            if k in SHARED:
                found.append((v["name"], k, "set for every variant in train.dpo, not per variant (they share "
                                            "the start model, the data and the reference pass)"))
            elif k not in trl_fields or k in spec.MACHINE:
                found.append((v["name"], k, "not a field of TRL's DPOConfig"))
            elif k in NOT_IN_A_SWEEP and value == NOT_IN_A_SWEEP[k]:
                found.append((v["name"], k, f"{value} would recompute the reference per variant; variants share one "
                                            f"precomputed reference pass"))
    return found


def start_model(spec: DPOSpec, run: Path) -> str:
    """The model dDPO starts from: the recipe's, else the dSFT output of the same run (`run/sft`)."""
    from rlaif.engines.models import resolve_model

    if spec.model is not None:
        return resolve_model(spec.model)
    sft = run / "sft"
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
              inputs: str | None = None, reporter: Reporter = NULL, run: str | Path | None = None) -> dict[str, Any]:
    """Train and save to `out_dir`; returns the final training metrics, the model it started from and
    the beta it trained with. `inputs` and `reporter` as for `train_sft`. `run`: the run directory
    (default: `out_dir`'s parent; a variant's `out_dir` is `<run>/dpo/<name>`), where the dSFT model
    and the stored reference log-probs (`<run>/ref_logps/`) are."""
    from rlaif.training import common
    from rlaif.training.datasets import load_preferences
    from rlaif.training.progress import StepProgress
    from rlaif.training.reference import ReferenceStore, StoredReferenceDPO

    #######
    # Setup
    #######
    out_dir = Path(out_dir)
    run = Path(run) if run is not None else out_dir.parent
    spec, args = dpo_config(spec, out_dir)

    #######
    # Model
    #######
    path = start_model(spec, run)
    tokenizer = common.load_tokenizer(path)
    if model is None:
        model = common.load_model(path, spec)
    ref_model = None
    if spec.ref_model is not None:
        from rlaif.engines.models import resolve_model

        if spec.lora is not None:
            raise ConfigError("train.dpo.ref_model: with lora the reference is the start model (adapters off); "
                              "drop one of them")
        ref_model = common.load_model(resolve_model(spec.ref_model), spec)

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
    store = ReferenceStore(run / "ref_logps", {"start_model": path, "dataset": spec.dataset or str(dataset_dir),
                                               "splits": [split, eval_split],
                                               **({"ref_model": spec.ref_model} if spec.ref_model else {})}
                           ) if args.precompute_ref_log_probs else None
    trainer = StoredReferenceDPO(model=model, ref_model=ref_model, args=args, train_dataset=train,
                                 eval_dataset=evaluation, processing_class=tokenizer,
                                 peft_config=common.peft_config(spec), callbacks=[StepProgress(reporter)], store=store)
    metrics = common.train_and_save(trainer, spec, out_dir, tokenizer, path, inputs)
    log.info("dDPO model saved to %s (%d steps, from %s)", out_dir, metrics["steps"], path)
    # rows: the pairs the closing table counts in; beta: recorded with the model (evaluate reads it)
    # reference_*: the reference passes this stage computed and read (training/reference.py)
    reference = {"reference_computed": len(store.computed), "reference_read": len(store.read)} if store else {}
    return {**metrics, "start_model": path, **({"ref_model": spec.ref_model} if spec.ref_model else {}), "rows": len(train), "beta": args.beta, "loss_type": list(args.loss_type),
            **reference}
