"""A training stage's weights: the dtype they train in, whether training moved them, and a plain
model made from a LoRA / QLoRA adapter.

    dtype = weights_dtype(spec)                    # float32 unless something else keeps float32
    sample = Sample.of(model); trainer.train()     # then: sample.moved(model) >= MIN_MOVED
    merge_adapter(base, out_dir / "adapter", out_dir)

Why float32: a weight stored in bfloat16 keeps 8 bits of mantissa, so an update smaller than about
1/256 of the weight rounds away. At Zephyr's dDPO learning rate (5e-7) that is every update of a
typical weight: a full fine-tune in bfloat16 weights "succeeds" having changed nothing. So full
fine-tuning on a GPU keeps float32 weights and computes in bfloat16 through autocast (`bf16=True` in
TRL's config), as the alignment-handbook does; bfloat16 weights are kept only where nothing is lost:
LoRA / QLoRA (the base is frozen; peft keeps the adapters in float32) and DeepSpeed (its optimizer
keeps float32 master weights itself, ZeRO-3 included).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MIN_MOVED = 0.05  # below this share of sampled weights moved, training changed nothing
PER_TENSOR = 1024  # weights sampled from each sampled tensor
TENSORS = 32  # tensors sampled, evenly spaced over the trainable ones


def uses_deepspeed(spec: Any) -> bool:
    """DeepSpeed runs the optimizer: `accelerate launch` with a DeepSpeed config sets
    ACCELERATE_USE_DEEPSPEED, and TRL's own `deepspeed:` field names a config."""
    env = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() in ("1", "true", "yes")
    return env or bool(spec.get("deepspeed"))


def weights_dtype(spec: Any, gpu: bool) -> Any:
    """float32 on CPU and for full fine-tuning on GPU; bfloat16 for LoRA / QLoRA and under DeepSpeed."""
    import torch

    if gpu and (spec.lora is not None or uses_deepspeed(spec)):
        return torch.bfloat16
    return torch.float32


# ----------------------------------------------------------------------------- did training move them
def _zero3(param: Any) -> bool:
    return hasattr(param, "ds_id")  # a DeepSpeed ZeRO-3 shard: this rank holds a slice, or nothing


def _values(param: Any) -> Any:
    """A fixed strided sample of the tensor's values, copied to the CPU (the full tensor gathered
    first under ZeRO-3, on every rank: the gather is collective)."""
    import torch

    if _zero3(param):
        import deepspeed

        with deepspeed.zero.GatheredParameters([param], modifier_rank=None):
            return _values_of(param.data)
    with torch.no_grad():
        return _values_of(param.data)


def _values_of(data: Any) -> Any:
    if hasattr(data, "full_tensor"):  # a DTensor (FSDP2): gathered on every rank, as the gather is collective
        data = data.full_tensor()
    flat = data.reshape(-1)
    step = max(1, flat.numel() // PER_TENSOR)
    return flat[::step][:PER_TENSOR].detach().to("cpu", copy=True)


class Sample:
    """Values of the trainable weights taken before training, to tell afterwards how many moved.

    Cheap at any size: at most TENSORS tensors, PER_TENSOR values each. Every process of a launch
    takes the same sample (the order of parameters is the model's), so all of them reach the same
    verdict and fail together."""

    def __init__(self, names: list[str], values: list[Any]):
        self.names, self.values = names, values

    @staticmethod
    def trainable(model: Any) -> dict[str, Any]:
        return {n: p for n, p in model.named_parameters() if p.requires_grad}

    @classmethod
    def of(cls, model: Any) -> Sample:
        params = cls.trainable(model)
        names = list(params)
        if len(names) > TENSORS:
            names = [names[round(i * (len(names) - 1) / (TENSORS - 1))] for i in range(TENSORS)]
        return cls(names, [_values(params[n]) for n in names])

    def moved(self, model: Any) -> float:
        """The share of the sampled values that differ now (1.0 when nothing could be sampled)."""
        params = self.trainable(model)
        total = changed = 0
        for name, before in zip(self.names, self.values, strict=True):
            if name not in params:
                continue
            after = _values(params[name])
            total += before.numel()
            changed += int((after != before).sum())
        return changed / total if total else 1.0


# ----------------------------------------------------------------------------- a plain model from an adapter
def merge_adapter(base: str, adapter_dir: str | Path, out_dir: str | Path) -> None:
    """Save base + adapter as one plain model in `out_dir`, which the next stage, `rlaif evaluate`
    and vLLM load like any other. The base is reloaded from its files unquantized (bfloat16 on a
    GPU machine, float32 elsewhere; QLoRA trained against NF4 weights, but its adapter applies to
    the real ones, as peft and the handbook merge it) and on the CPU, so the merge needs no GPU
    memory beside a trainer that still holds its model."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(str(out_dir))
    log.info("merged the adapter %s into %s: a plain model in %s", adapter_dir, base, out_dir)
