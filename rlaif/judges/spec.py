"""A judge as a recipe writes it: which kind, which model, which template version, which settings.

One `JudgeSpec` describes every kind, so swapping a judge is swapping a block of YAML. The kinds
(rlaif/judges/kinds/) and what they rate:

    kind               rates                        verdict                           template
    ultrafeedback      each completion, per aspect  1-5 + rationale per aspect        ultrafeedback_rating
                       (mode joint: all of a prompt's completions per request)    ultrafeedback_joint
    critique           each completion              critique + overall 1-10           ultrafeedback_critique
    mt_bench_single    each completion              explanation + [[1-10]]            MT-Bench single-v1
    pairwise           two completions, both orders "A" or "B" + rationale            pairwise
    mt_bench_pairwise  two completions, both orders explanation + [[A]]/[[B]]/[[C]]   MT-Bench pair-v2
    reward_model       each completion              a sequence-classification score   (the model's chat template)

Argilla's Notus averaging is not a kind of its own: it is the `ultrafeedback` kind's score, the mean
of the aspect ratings (`Judgement.score`), and binarization's default.

A kind's own settings are its `options:` (each kind's options model: ultrafeedback's `aspects`,
the MT-Bench kinds' `explanation_chars`, reward_model's `max_length` and `batch_size`); written
beside `kind:` as before, they are moved into `options:`.

The settings hash covers everything that shapes a verdict (kind, model, where it runs, template
name + version + content hash, sampling, constraints, and the kind's own settings), so changing
any of them re-judges.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from pydantic import (BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, ValidationInfo, field_validator,
                      model_validator)

from rlaif.core.records import content_hash
from rlaif.engines.backend import EngineSpec, known_backend
from rlaif.engines.base import EngineSettings, Sampling, output_settings
from rlaif.engines.config import Endpoint
from rlaif.judges.base import JudgeKind
from rlaif.judges.registry import all_kinds, get_kind
from rlaif.prompts import Template, plain_name

log = logging.getLogger(__name__)

# kinds' settings that were judge-block fields before `options:`; still read there, moved into options
MOVED_TO_OPTIONS = ("aspects", "explanation_chars", "max_length", "batch_size")


class JudgeSpec(BaseModel):
    """A recipe's judge block (an item of `judges:`)."""

    model_config = ConfigDict(extra="forbid")

    name: str  # how records, the run directory and the dataset name this judge
    kind: str = "ultrafeedback"  # one of rlaif/judges/kinds (table above)
    model: str  # bundled name, local dir, hub id, or the endpoint's model name
    endpoint: Endpoint | None = None  # set: judge through an OpenAI-compatible server
    engine: EngineSettings | None = None  # this judge's engine settings; default: the recipe's `engine:`
    options: Any = None  # the kind's own settings (its `options` model), e.g. ultrafeedback's aspects
    # ultrafeedback: joint (all of a prompt's completions per request) or per_completion; default:
    # joint on a hosted endpoint, per_completion on a local engine or one's own server
    mode: Literal["joint", "per_completion"] | None = None
    template: str | None = None  # default: the kind's template (table above)
    template_version: str | None = None
    sampling: Sampling | None = None  # default: greedy, the kind's max_tokens
    top_logprobs: int = Field(20, ge=5, le=20)  # must cover the verdict tokens
    logprobs: bool = True  # False: no log-probs asked; scores from the sampled verdicts
    structured: bool = True  # constrain output (guided JSON / regex / response_format); False: parse free text
    retries: int = Field(2, ge=0)  # re-asks for an output that did not parse
    retry_temperature: float = Field(0.7, ge=0)  # a re-ask at temperature 0 would write the same text
    # drift (judges/sentinels.py): N prompts kept with their completions and judged again by every
    # run that judges something new; past `max_drift` (the share of their preferences that flipped
    # since the first check) the run publishes nothing and exits 5. Neither shapes a verdict: not hashed.
    sentinels: int = Field(0, ge=0)
    max_drift: float = Field(0.1, ge=0, le=1)

    # set from the recipe, not written in a judge block: its templates_dir and its `engine:` block
    _templates_dir: str | None = PrivateAttr(None)
    _engine_default: EngineSettings | None = PrivateAttr(None)

    _known_backend = field_validator("engine")(known_backend)

    @field_validator("name", "template", "template_version")
    @classmethod
    def _plain(cls, value: str | None) -> str | None:
        if value is not None and not plain_name(value):
            raise ValueError(f"{value!r} is not a plain name (letters, digits, _ - .; no '/' or '..'): it names a "
                             f"folder or file inside the run or the templates, never a path")
        return value

    @model_validator(mode="before")
    @classmethod
    def _options_moved(cls, data: Any) -> Any:
        """`aspects: [...]` beside `kind:` (before `options:`) is read as `options: {aspects: [...]}`;
        one the kind does not take is ignored, as it always was."""
        if not isinstance(data, dict) or not any(k in data for k in MOVED_TO_OPTIONS):
            return data
        data, kind = dict(data), all_kinds().get(data.get("kind", "ultrafeedback"))
        options = data.get("options")
        options = dict(options) if isinstance(options, dict) else {} if options is None else options
        for k in MOVED_TO_OPTIONS:
            if k not in data:
                continue
            value = data.pop(k)
            if kind is None or k not in kind.options.model_fields:
                log.warning("judge %r: %s is not a setting of the %s kind; ignored", data.get("name"), k,
                            data.get("kind", "ultrafeedback"))
            elif not isinstance(options, dict) or k in options:
                raise ValueError(f"{k} is set twice: write it once, under options:")
            else:
                options[k] = value
        data["options"] = options
        return data

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, kind: str) -> str:
        if kind not in all_kinds():
            raise ValueError(f"unknown judge kind {kind!r} (kinds: {sorted(all_kinds())})")
        return kind

    @model_validator(mode="after")
    def _kind_defaults(self, info: ValidationInfo) -> JudgeSpec:
        self._templates_dir = (info.context or {}).get("templates_dir")
        kind = self.impl
        if not isinstance(self.options, kind.options):
            try:
                self.options = kind.options.model_validate(self.options if self.options is not None else {})
            except ValidationError as e:
                raise ValueError("options of the {} kind: {}".format(kind.name, "; ".join(
                    f"{'.'.join(map(str, err['loc']))}: {err['msg'].removeprefix('Value error, ')}" for err in e.errors()))) from None
        self.mode = self.mode or kind.default_mode(self)
        self.template = self.template or kind.default_template(self)
        self.template_version = self.template_version or kind.version
        if self.sampling is None:
            self.sampling = Sampling(temperature=0.0, max_tokens=kind.max_tokens)
        kind.validate(self)  # a template that does not exist fails here, naming the ones there are
        return self

    @property
    def impl(self) -> JudgeKind:
        return get_kind(self.kind)

    @property
    def pairwise(self) -> bool:
        return self.impl.pairwise

    @property
    def templates_dir(self) -> str | None:
        """The recipe's templates_dir (looked in before the kind's templates), if it names one."""
        return self._templates_dir

    def judge_template(self) -> Template:
        return self.impl.template_for(self)

    def settings_hash(self) -> str:
        t = self.judge_template()
        where = self.endpoint.base_url if self.endpoint else None  # never the key
        no_logprobs = () if self.logprobs else ("no-logprobs",)  # absent when on: older hashes stand
        engine = self.engine_spec(self._engine_default)
        # the engine settings that change what a local model writes; absent when none is set, so
        # the hashes of recipes that set none stand
        outputs = output_settings(engine.settings) if engine is not None and engine.local else {}
        return content_hash(self.kind, self.model, where, t.name, t.version, t.hash, self.sampling, self.top_logprobs,
                            self.structured, self.retries, self.retry_temperature, *self.impl.hash_parts(self),
                            *no_logprobs, *((outputs,) if outputs else ()))

    def engine_spec(self, default: EngineSettings | None = None) -> EngineSpec | None:
        """The text engine this judge runs on; None for a kind that brings its own (a reward model)."""
        if not self.impl.text:
            return None
        return EngineSpec(self.model, self.endpoint, (self.engine or EngineSettings()).over(default))
