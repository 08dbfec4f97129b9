"""Recipes: one YAML file that says everything a run does, validated by pydantic.

Each block is the settings model of the stage it drives, so a recipe can hold nothing a stage
does not understand: an unknown or mistyped field is an error that names the file and the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from generation.engines import EngineSettings
from generation.ensemble import GeneratorSpec
from generation.hygiene import HygieneSpec
from judges.binarize import BinarizeSpec
from judges.spec import JudgeSpec
from training.dpo import DPOSpec
from training.sft import SFTSpec


class PromptSource(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: str = "mt_bench"  # a bundled set, a .jsonl file, a saved dataset dir, or hf:<id>
    split: str = "train"
    limit: int | None = Field(None, ge=1)


class TrainSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sft: SFTSpec | None = None  # dSFT on train_sft, written to <run>/sft
    dpo: DPOSpec | None = None  # dDPO on train_prefs, from <run>/sft unless dpo.model is set


class FlowSpec(BaseModel):
    """How Prefect runs the stages: retries for tasks that call a remote endpoint."""

    model_config = ConfigDict(extra="forbid")

    retries: int = Field(3, ge=0)  # only tasks whose generator or judge has an `endpoint:`
    retry_delay_seconds: float = Field(10, ge=0)  # the first delay; doubles on each retry
    retry_jitter_factor: float = Field(0.5, ge=0)  # each delay varies by up to this fraction


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    seed: int = 0
    shard_size: int = Field(256, ge=1)  # records per shard: the unit of skipping and resuming
    prompts: PromptSource = Field(default_factory=PromptSource)
    hygiene: HygieneSpec = Field(default_factory=HygieneSpec)  # dedup and eval decontamination
    generators: list[GeneratorSpec] = Field(min_length=1)
    models_per_prompt: int | None = Field(None, ge=1)  # K members drawn per prompt; None: every member
    judges: list[JudgeSpec] = Field(min_length=1)  # side by side in the run; binarize.judge picks one
    binarize: BinarizeSpec = Field(default_factory=BinarizeSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)
    engine: EngineSettings = Field(default_factory=EngineSettings)
    flow: FlowSpec = Field(default_factory=FlowSpec)

    @model_validator(mode="before")
    @classmethod
    def _one_judge(cls, data: Any) -> Any:
        if isinstance(data, dict) and "judge" in data and "judges" not in data:
            data = {**data, "judges": [data["judge"]]}  # a single `judge:` block is a list of one
            del data["judge"]
        return data

    @model_validator(mode="after")
    def _judge_names(self) -> "Recipe":
        names = [j.name for j in self.judges]
        if len(set(names)) != len(names):
            raise ValueError(f"judge names must be unique, got {names}")
        if self.binarize.judge is not None and self.binarize.judge not in names:
            raise ValueError(f"binarize.judge {self.binarize.judge!r} is not one of the judges {names}")
        return self

    def judge_spec(self, name: str | None = None) -> JudgeSpec:
        """The judge named `name`, else the one binarization uses (binarize.judge, or the first)."""
        name = name or self.binarize.judge or self.judges[0].name
        for j in self.judges:
            if j.name == name:
                return j
        raise RecipeError(f"no judge named {name!r} in this recipe (judges: {[j.name for j in self.judges]})")

    @field_validator("generators")
    @classmethod
    def _unique_names(cls, generators: list[GeneratorSpec]) -> list[GeneratorSpec]:
        names = [g.name for g in generators]
        if len(set(names)) != len(names):
            raise ValueError(f"generator names must be unique, got {names}")
        return generators


class RecipeError(ValueError):
    pass


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    node = data
    keys = dotted.split(".")
    for k in keys[:-1]:
        if isinstance(node, list):
            node = node[int(k)]
        else:
            node = node.setdefault(k, {})
    if isinstance(node, list):
        node[int(keys[-1])] = value
    else:
        node[keys[-1]] = value


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read and validate a recipe; `overrides` are `dotted.key=yaml-value` strings."""
    path = Path(path)
    if not path.exists():
        raise RecipeError(f"{path}: recipe not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise RecipeError(f"{path}: not valid YAML: {e}") from None
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise RecipeError(f"override {item!r} must look like key.path=value")
        _set_dotted(data, key, yaml.safe_load(value))
    try:
        return Recipe.model_validate(data)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            field = ".".join(str(x) for x in err["loc"])
            msg = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
            lines.append(f"{path}: field '{field}': {msg}")
        raise RecipeError("\n".join(lines)) from None
