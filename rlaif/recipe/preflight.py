"""Preflight: the configuration mistakes a run can hit, found before it spends compute.

The commands that run stages (`rlaif run`, `generate`, `judge`, `binarize`, `train`) call
`preflight` before their flow starts, so before Prefect's server and before any engine; the
refresh flow calls it first when a deployment runs it. It checks what the command will use and
reports every problem at once, one line each (a `ConfigError`, exit code 2):

    run directory   can be written (a file is written, fsynced, renamed and removed)
    models          each local model resolves: bundled, a local directory with config.json, or a hub
                    id in the Hugging Face cache or on a hub this machine reaches (short timeout)
    endpoints       each answers GET /models with its key, and lists the model; the key variable is set
    templates       every generator's and judge's template exists
    prompts         the source (and hygiene's eval set) decodes and validates: file, line and field
    prompt length   no prompt is longer than a local generator's context, counted with that model's
                    tokenizer and chat template before any engine loads: too long ones are listed
                    with their ids and the model's limit
    training        the model resolves, its tokenizer has a chat template, TRL accepts the block
    push            HF_TOKEN is set and the Hub accepts it, when a push is asked

Only tokenizers and config files are read: seconds, whatever the size of the models.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from rlaif.core.errors import ConfigError, RlaifError, os_error_message
from rlaif.core.records import Prompt
from rlaif.recipe.spec import Recipe
from rlaif.generation.ensemble import GeneratorSpec, assign, request
from rlaif.judges.spec import JudgeSpec

log = logging.getLogger(__name__)

SHOWN = 5  # over-long prompts named per model; the rest are counted


class Problems(list):
    """The problems found so far, one line each."""

    def check(self, who: str, fn: Callable[..., Any], *args: Any) -> Any:
        """Run one check; a problem it raises is kept (prefixed with `who`) and None returned."""
        try:
            return fn(*args)
        except RlaifError as e:
            self.extend(f"{who}{line}" for line in str(e).splitlines())
        except OSError as e:
            self.append(f"{who}{os_error_message(e)}")
        return None


def preflight(recipe: Recipe, out: str | Path, stages: Iterable[str], judges: list[JudgeSpec] | None = None) -> None:
    """Check what `stages` (of "generate", "judge", "binarize", "sft", "dpo") will use; raise one
    ConfigError listing every problem. `judges`: the judges that will judge (default: the one
    binarization uses, when "judge" is a stage)."""
    start = time.perf_counter()
    stages = set(stages)
    if judges is None:
        judges = [recipe.judge_spec()] if "judge" in stages else []
    generators = recipe.generators if "generate" in stages else []
    problems = Problems()
    problems.check("", writable, Path(out))

    models: dict[str, str] = {}  # local model -> who uses it first
    remote: dict[str, list[Any]] = {}  # backend -> the engine specs it checks (one check per server)
    local: set[str] = set()  # the members and judges (as `who`) whose model runs here
    for who, spec in [(f"generator {g.name!r}: ", g) for g in generators] + [(f"judge {j.name!r}: ", j) for j in judges]:
        problems.check(who, spec.settings_hash)  # loads its templates
        engine = spec.engine_spec(recipe.engine)  # None: a judge that brings its own model (a reward model)
        backend = problems.check(who, lambda e=engine: e.backend) if engine is not None else None
        if engine is None or (backend is not None and backend.local):
            models.setdefault(spec.model, who)
            local.add(who)
        elif backend is not None:
            remote.setdefault(engine.backend_name, []).append(engine)
    for stage in ("sft", "dpo"):
        spec = getattr(recipe.train, stage)
        if stage in stages and spec is not None and spec.model:
            models.setdefault(spec.model, f"train.{stage}: ")

    from rlaif.engines.backend import get_backend
    from rlaif.engines.models import check_model

    bad_models = set()
    for m, who in models.items():
        found = len(problems)
        problems.check(who, check_model, m)
        if len(problems) > found:
            bad_models.add(m)
    endpoints = [check for name, specs in remote.items() for check in get_backend(name).checks(specs)]
    for check in endpoints:
        problems.check("", check)

    if stages & {"generate", "judge", "binarize"}:
        p = recipe.prompts
        prompts = problems.check("", read_prompts, p.source, p.limit, p.split)
        for source in recipe.hygiene.eval_prompts:
            problems.check("hygiene.eval_prompts: ", read_prompts, source, None, "train")
        if prompts and generators:
            assigned = assign(prompts, generators, recipe.models_per_prompt, recipe.seed)
            for g in [g for g in generators if f"generator {g.name!r}: " in local and g.model not in bad_models]:
                problems.check(f"generator {g.name!r}: ", too_long, g, assigned[g.name],
                               g.engine_spec(recipe.engine).settings)  # its own block over the recipe's
    for stage in ("sft", "dpo"):
        spec = getattr(recipe.train, stage)
        if stage in stages and spec is not None:
            if spec.model is None or spec.model not in bad_models:
                problems.check("", start_model, stage, spec, Path(out), "sft" in stages)
            problems.check("", training_config, stage, spec, Path(out))
    if "binarize" in stages and recipe.binarize.push_to_hub:
        from rlaif.preferences.hub import check_push

        problems.check("binarize.push_to_hub: ", check_push, recipe.binarize.push_to_hub)

    log.info("preflight: %d models, %d endpoints, stages %s checked in %.1f s", len(models), len(endpoints),
             sorted(stages), time.perf_counter() - start)
    if problems:
        raise ConfigError("\n".join(dict.fromkeys(problems)))


# ----------------------------------------------------------------------------- the checks
def writable(out: Path) -> None:
    """The run directory takes a file the way every file is written: temp name, fsync, rename."""
    from rlaif.core.store import write_atomic

    try:
        probe = write_atomic(out / ".preflight", b"ok\n")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"cannot write the run directory {out}: {os_error_message(e)}") from None


def read_prompts(source: str, limit: int | None, split: str) -> list[Prompt]:
    """Every prompt of the source, decoded and validated (a PromptSetError names file and line)."""
    from rlaif.prompts.prompt_sets import load_prompts

    try:
        return load_prompts(source, limit, split)
    except RlaifError:
        raise
    except Exception as e:  # a hub dataset out of reach, a corrupt saved dataset
        raise ConfigError(f"{source}: cannot read the prompts ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None


def too_long(spec: GeneratorSpec, prompts: list[Prompt], settings) -> None:
    """Prompts whose request (template, system prompt, URIAL preamble) fills the model's context."""
    from rlaif.engines.models import resolve_model
    from rlaif.engines.vllm_offline import context_limit, prompt_lengths

    path = resolve_model(spec.model)
    limit = context_limit(path, settings)
    if limit is None or not prompts:
        return
    lengths = prompt_lengths(tokenizer(path), [request(spec, p) for p in prompts])
    long = [(p.prompt_id, n) for p, n in zip(prompts, lengths) if n >= limit]
    if long:
        named = ", ".join(f"{pid} ({n} tokens)" for pid, n in long[:SHOWN])
        more = f" and {len(long) - SHOWN} more" if len(long) > SHOWN else ""
        raise ConfigError(f"{len(long)} prompts too long for {spec.model} (a context of {limit} tokens): {named}{more}; "
                          f"shorten or drop them, or raise max_model_len in the engine settings")


def tokenizer(path: str):
    """A model's tokenizer from its tokenizer.json, without importing transformers' auto classes
    (and torch): a few seconds less per command. The same tokens as AutoTokenizer's."""
    if (Path(path) / "tokenizer.json").exists():
        from transformers import PreTrainedTokenizerFast

        return PreTrainedTokenizerFast.from_pretrained(path)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def start_model(stage: str, spec, out: Path, sft_runs_first: bool) -> None:
    """The model a training stage starts from is there, with a chat template."""
    if spec.model is not None:
        from rlaif.engines.models import resolve_model

        if not tokenizer(resolve_model(spec.model)).chat_template and not getattr(spec, "chat_template", None):
            fix = "set train.sft.chat_template (a Jinja template)" if stage == "sft" else "train a model that has one"
            raise ConfigError(f"train.{stage}.model {spec.model}: the tokenizer has no chat template, which the "
                              f"conversational dataset needs: {fix}")
    elif stage == "dpo" and not sft_runs_first and not (out / "sft" / "config.json").exists():
        raise ConfigError(f"train.dpo.model is unset, so dDPO starts from this run's dSFT model, but {out / 'sft'} "
                          f"has none: run `rlaif train sft` first or set train.dpo.model")


def training_config(stage: str, spec, out: Path) -> None:
    """The dataset a block names exists, and TRL accepts the block."""
    from rlaif.training import common

    if spec.dataset and not spec.dataset.startswith("hf:") and not Path(spec.dataset).exists():
        raise ConfigError(f"train.{stage}.dataset {spec.dataset}: no such directory")
    if stage == "sft":
        from trl import SFTConfig

        common.trl_config(spec, SFTConfig, out / stage, "train.sft")
    else:
        from rlaif.training.dpo import dpo_config

        dpo_config(spec, out / stage)
        for name, variant in spec.variant_specs():  # each variant's values too, before any trains
            try:
                dpo_config(variant, out / stage / name)
            except ConfigError as e:
                raise ConfigError(f"train.dpo.variants ({name!r}): {e}") from None
