"""Recipes: one YAML file that says everything a run does, validated by pydantic.

Each block is the settings model of the stage it drives, so a recipe can hold nothing a stage
does not understand: an unknown or mistyped field is an error that names the file and the field,
before anything runs. The training blocks are TRL's own config fields (see training/common.py).

A recipe makes data (`generators:` and `judges:`), trains (`train:`), or both. A recipe with only
`train:` trains on a dataset it names (`train.<stage>.dataset`) or on the run's `dataset`; `rlaif
run` then runs only its training stages.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_serializer, model_validator

from rlaif.core.errors import ConfigError, validation_message
from rlaif.core.store import RUNS
from rlaif.engines.base import EngineSettings
from rlaif.generation.ensemble import GeneratorSpec
from rlaif.judges.spec import JudgeSpec
from rlaif.preferences.binarize import BinarizeSpec
from rlaif.prompts import plain_name
from rlaif.prompts.hygiene import HygieneSpec
from rlaif.recipe.rounds import RoundsSpec, rounds_problems
from rlaif.training.common import trl_fields, unknown_fields
from rlaif.training.dpo import DPOSpec, variant_problems
from rlaif.training.sft import SFTSpec


class PromptSource(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: str = "starter"  # a bundled set, a .jsonl file, a saved dataset dir, or hf:<id>
    split: str = "train"
    limit: int | None = Field(None, ge=1)


class TrainSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sft: SFTSpec | None = None  # dSFT on train_sft, written to <run>/sft
    dpo: DPOSpec | None = None  # dDPO on train_prefs, from <run>/sft unless dpo.model is set


class FlowSpec(BaseModel):
    """How Prefect runs the stages: retries for tasks that call a remote endpoint, and how many
    failed rows a run may end with and still exit 0."""

    model_config = ConfigDict(extra="forbid")

    retries: int = Field(3, ge=0)  # only tasks whose generator or judge has an `endpoint:`
    retry_delay_seconds: float = Field(10, ge=0)  # the first delay; doubles on each retry
    retry_jitter_factor: float = Field(0.5, ge=0)  # each delay varies by up to this fraction
    max_failed_rows: int = Field(0, ge=0)  # failed completions + judgements allowed; more: exit 4 (flows/failures.py)


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str  # the run's folder under runs/: a plain name
    # a folder of the recipe's own templates (<name>.<version>.jinja|txt), relative to the recipe file,
    # looked in before the package's; templates come from nowhere else
    templates_dir: str | None = None
    seed: int = 0
    shard_size: int = Field(256, ge=1)  # prompts per chunk: the unit of skipping and resuming
    prompts: PromptSource = Field(default_factory=PromptSource)
    hygiene: HygieneSpec = Field(default_factory=HygieneSpec)  # dedup and eval decontamination, before generating
    generators: list[GeneratorSpec] = Field(default_factory=list)  # none: a recipe that only trains
    models_per_prompt: int | None = Field(None, ge=1)  # K members drawn per prompt; None: every member
    judges: list[JudgeSpec] = Field(default_factory=list)  # side by side in the run; binarize.judge picks one
    binarize: BinarizeSpec = Field(default_factory=BinarizeSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)
    engine: EngineSettings = Field(default_factory=EngineSettings)  # default for every member and judge
    flow: FlowSpec = Field(default_factory=FlowSpec)
    rounds: RoundsSpec = Field(default_factory=RoundsSpec)  # on-policy rounds of dDPO (recipe/rounds.py); 1: a plain run

    @model_serializer(mode="wrap")
    def _without_one_round(self, handler: Any) -> dict[str, Any]:
        """No `rounds` key for a plain run: its recipe.json reads as it did before rounds existed."""
        data = handler(self)
        if isinstance(data, dict) and not self.rounds.on and self.rounds == RoundsSpec():
            data.pop("rounds", None)
        return data

    @model_validator(mode="before")
    @classmethod
    def _one_judge(cls, data: Any) -> Any:
        if isinstance(data, dict) and "judge" in data and "judges" not in data:
            data = {**data, "judges": [data["judge"]]}  # a single `judge:` block is a list of one
            del data["judge"]
        return data

    @property
    def makes_data(self) -> bool:
        """The recipe generates, judges and binarizes; False: it only trains."""
        return bool(self.generators)

    @property
    def trains(self) -> bool:
        return self.train.sft is not None or self.train.dpo is not None

    @field_validator("name")
    @classmethod
    def _plain_name(cls, name: str) -> str:
        if not plain_name(name):
            raise ValueError(f"{name!r} is not a plain name (letters, digits, _ - .; no '/' or '..'): it is the run's "
                             f"folder under {RUNS}/ (use --out to put the run elsewhere)")
        return name

    @model_validator(mode="after")
    def _engine_defaults(self) -> Recipe:
        """Each member and judge hashes its settings with the recipe's `engine:` block under its own."""
        for spec in [*self.generators, *self.judges]:
            spec._engine_default = self.engine
        return self

    @model_validator(mode="after")
    def _something_to_do(self) -> Recipe:
        if not self.generators and not self.trains:
            raise ValueError("nothing to do: give generators and judges (to make a preference dataset), "
                             "a train: block with sft or dpo (to train on one), or both")
        if self.generators and not self.judges:
            raise ValueError("field 'judges': generators need at least one judge to rate their answers")
        return self

    @model_validator(mode="after")
    def _prompts_are_not_an_eval_set(self) -> Recipe:
        if self.generators and self.prompts.source in self.hygiene.eval_prompts:
            raise ValueError(f"field 'prompts.source': {self.prompts.source!r} is an evaluation set that "
                             f"hygiene.eval_prompts keeps out of the data, so every prompt would be removed; use "
                             f"another source (e.g. the bundled 'starter' set) or set hygiene.eval_prompts: []")
        return self

    @model_validator(mode="after")
    def _judge_names(self) -> Recipe:
        names = [j.name for j in self.judges]
        if len(set(names)) != len(names):
            raise ValueError(f"judge names must be unique, got {names}")
        if self.binarize.judge is not None and self.binarize.judge not in names:
            raise ValueError(f"binarize.judge {self.binarize.judge!r} is not one of the judges {names}")
        return self

    @model_validator(mode="after")
    def _rounds(self) -> Recipe:
        problems = rounds_problems(self)
        if problems:
            raise ValueError(problems[0])
        return self

    @field_validator("generators")
    @classmethod
    def _unique_names(cls, generators: list[GeneratorSpec]) -> list[GeneratorSpec]:
        names = [g.name for g in generators]
        if len(set(names)) != len(names):
            raise ValueError(f"generator names must be unique, got {names}")
        return generators

    def training_data(self, run: Path) -> list[str]:
        """What the run's models were trained on: each training stage's dataset (unset: the run's
        own), or the run's own dataset when the recipe trains nothing (it was trained by another)."""
        specs = [s for s in (self.train.sft, self.train.dpo) if s is not None]
        return list(dict.fromkeys(s.dataset or str(run / "dataset") for s in specs)) or [str(run / "dataset")]

    def judge_spec(self, name: str | None = None) -> JudgeSpec:
        """The judge named `name`, else the one binarization uses (binarize.judge, or the first)."""
        if not self.judges:
            raise RecipeError("this recipe has no judges: add a judges: block (a judge grades answers for "
                              "binarize, evaluate's win rate and MT-Bench)")
        name = name or self.binarize.judge or self.judges[0].name
        for j in self.judges:
            if j.name == name:
                return j
        raise RecipeError(f"no judge named {name!r} in this recipe (judges: {[j.name for j in self.judges]})")

    def binarize_spec(self, judge: str | None = None) -> BinarizeSpec:
        """The binarize block with its judge named, whichever command publishes."""
        return self.binarize.model_copy(update={"judge": self.judge_spec(judge).name})


class RecipeError(ConfigError):
    pass


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    node: Any = data
    keys = dotted.split(".")
    for k in keys[:-1]:
        node = node[int(k)] if isinstance(node, list) else node.setdefault(k, {})
        if not isinstance(node, (dict, list)):
            raise KeyError(k)
    if isinstance(node, list):
        node[int(keys[-1])] = value
    else:
        node[keys[-1]] = value


def read_yaml(path: Path, what: str = "recipe") -> Any:
    if path.is_dir():
        raise RecipeError(f"{path}: is a directory; give the {what}'s YAML file")
    if not path.exists():
        raise RecipeError(f"{path}: {what} not found")
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark else ""
        raise RecipeError(f"{path}{where}: not valid YAML ({getattr(e, 'problem', None) or e})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise RecipeError(f"{path}: cannot read the {what} ({e})") from None


def _templates_dir(recipe: Path, value: Any) -> str | None:
    """The recipe's `templates_dir`, resolved against the recipe file's folder; it must be a folder."""
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise RecipeError(f"{recipe}: field 'templates_dir': give a folder, relative to the recipe file")
    folder = (recipe.parent / value).resolve()
    if not folder.is_dir():
        raise RecipeError(f"{recipe}: field 'templates_dir': {folder} is not a folder")
    return str(folder)


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read and validate a recipe; `overrides` are `dotted.key=yaml-value` strings."""
    path = Path(path)
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe is a YAML mapping (name, generators, judges, ...)")
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise RecipeError(f"--set {item!r}: must look like key.path=value")
        try:
            _set_dotted(data, key, yaml.safe_load(value))
        except (KeyError, IndexError, ValueError, TypeError, yaml.YAMLError):
            raise RecipeError(f"--set {item!r}: {key!r} is not a field path of {path}") from None
    templates = _templates_dir(path, data.get("templates_dir"))
    if templates is not None:
        data["templates_dir"] = templates  # absolute in recipe.json: the run says which folder it used
    try:
        recipe = Recipe.model_validate(data, context={"templates_dir": templates})
    except ValidationError as e:
        raise RecipeError(validation_message(str(path), e)) from None
    bad = [f"{path}: field 'train.{stage}.{k}': unknown field (neither ours nor in TRL's {spec.TRL_CLASS})"
           for stage in ("sft", "dpo") if (spec := getattr(recipe.train, stage)) is not None
           for k in unknown_fields(spec)]
    if recipe.train.dpo is not None and recipe.train.dpo.variants:
        bad += [f"{path}: field 'train.dpo.variants' (variant {name!r}): '{k}': {problem}"
                for name, k, problem in variant_problems(recipe.train.dpo, trl_fields("DPOConfig"))]
    if bad:
        raise RecipeError("\n".join(bad))
    return recipe
