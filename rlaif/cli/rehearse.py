"""`rlaif rehearse RECIPE [RECIPE ...]`: a recipe's whole chain on a laptop, before renting GPUs.

A Zephyr-size job that fails at hour six on a config mistake is the failure this prevents. The
rehearsal runs the same commands a user runs (`rlaif run`, then `rlaif evaluate --no-win-rate` where
the recipes train dDPO (with `rounds:`, of the last round's model, and the rounds' table printed at
the end), `rlaif evaluate --mt-bench` where they have an MT-Bench judge), as subprocesses through
the same code paths, with three things swapped:

    models     every hub model id (generators, judges, training) by a tiny stand-in of its kind,
               chat or base (rehearsal/standins.py), under the same id in a Hugging Face cache of
               the rehearsal's own (HF_HOME, HF_HUB_OFFLINE=1): ids resolve as on the GPU machine
    datasets   every `hf:` dataset by its first N rows of each split, read from the user's cache or
               the hub, under the same id in that cache
    endpoints  every hosted endpoint by the local strict OpenAI server (rehearsal/openai_server/),
               which refuses what the API refuses; the user's keys are checked to be set, never sent

and the CPU's needs as `--set` overrides (rehearsal/overrides.py): N prompts (with rounds: N a
round, 2 held out, 2 samples from the policy; datasets cut to what the rounds draw), one training step
per stage, float32, one device, short lengths. Before any of that it checks what only the real world can
say: that each model id exists (local cache or hub), each dataset has its split, and each key
variable is set. Several recipes rehearse as one chain in one run directory (`sft.yaml dpo.yaml`:
data and dSFT, then dDPO from that dSFT), as the Zephyr README runs them.

What it swapped, what it checked and each command's time are printed; the run directory
(`runs/rehearsal/<name>` unless `--out`) keeps every command's log. A failing command ends the
rehearsal with its own one-line error and exit code.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlaif.core.errors import ConfigError
from rlaif.cli.console import echo

REHEARSAL_KEY = "sk-rehearsal-not-a-real-key"
DATASET_ROWS = 16  # rows per split of a rehearsal dataset: N prompts and a few training pairs


@dataclass
class Plan:
    """What a rehearsal swaps: model id -> kind, dataset id -> splits, endpoint models, key variables."""

    models: dict[str, str] = field(default_factory=dict)
    local: set[str] = field(default_factory=set)  # local model directories: the user's own, used as they are
    datasets: dict[str, set[str]] = field(default_factory=dict)
    served: dict[str, bool] = field(default_factory=dict)  # endpoint model -> is a reasoning model
    keys: set[str] = field(default_factory=set)
    checked: list[str] = field(default_factory=list)


def rehearse(paths: list[str], overrides: list[str], prompts: int, out: Path) -> int:
    """Rehearse the chain of `paths` (recipes) into `out`; 0, or the failing command's exit code."""
    from rlaif.recipe.spec import load_recipe
    from rlaif.rehearsal.overrides import rounds_prompts

    recipes = [load_recipe(p, overrides) for p in paths]
    plan = plan_for(recipes)
    check(plan, paths)
    for line in plan.checked:
        echo(f"checked  {line}")
    with tempfile.TemporaryDirectory(prefix="rlaif-rehearsal-") as home:
        env = build_home(Path(home), plan, max(rounds_prompts(r, prompts) for r in recipes))
        server = start_server(plan)
        try:
            steps = chain(paths, recipes, overrides, prompts, out, server.base_url if server else None)
            code = run_steps(steps, env, out)
            if code == 0 and recipes[-1].rounds.on:
                show_rounds(out)
            return code
        finally:
            if server is not None:
                server.stop()


# ----------------------------------------------------------------------------- what to swap
def plan_for(recipes: list[Any]) -> Plan:
    from rlaif.engines.providers import REASONING_MODEL
    from rlaif.recipe.rounds import POLICY

    plan = Plan()
    for recipe in recipes:
        members = [(g, "base" if g.format == "urial" else None) for g in recipe.generators]
        for m, hint in members + [(j, None) for j in recipe.judges]:
            if m.endpoint is not None:
                reasoning = m.endpoint.reasoning
                plan.served[m.model] = bool(REASONING_MODEL.match(m.model)) if reasoning is None else reasoning
                if m.endpoint.api_key_env:
                    plan.keys.add(m.endpoint.api_key_env)
            elif m.model != POLICY:  # `policy`: each round's own model (round 1: the student, below)
                _add_model(plan, m.model, hint)
        for stage in ("sft", "dpo"):
            spec = getattr(recipe.train, stage)
            if spec is None:
                continue
            if spec.model:
                _add_model(plan, spec.model, "base" if getattr(spec, "chat_template", None) else None)
            if spec.dataset and spec.dataset.startswith("hf:"):
                plan.datasets.setdefault(spec.dataset[3:], set()).add(spec.splits()[0])
        if recipe.generators and recipe.prompts.source.startswith("hf:"):
            plan.datasets.setdefault(recipe.prompts.source[3:], set()).add(recipe.prompts.split)
    return plan


def _add_model(plan: Plan, model: str, hint: str | None) -> None:
    from rlaif.engines.models import BUNDLED

    if model in BUNDLED:
        return
    if Path(model).expanduser().exists() or model.startswith(("/", ".", "~")):
        plan.local.add(model)
    else:
        plan.models.setdefault(model, hint or "")


# ----------------------------------------------------------------------------- what the real world says
def check(plan: Plan, paths: list[str]) -> None:
    """Every model id exists, every dataset has its split, every key variable is set: all problems
    at once, one line each, before anything runs."""
    from rlaif.engines.models import check_model
    from rlaif.rehearsal.standins import model_kind

    where = " ".join(paths)
    problems = []
    for var in sorted(plan.keys):
        if os.environ.get(var):
            plan.checked.append(f"{var} is set (the rehearsal sends a key of its own, never yours)")
        else:
            problems.append(f"{where}: the key variable {var} is not set (an endpoint reads its key from it)")
    for model, hint in plan.models.items():
        try:
            check_model(model)
        except ConfigError as e:
            problems.append(f"{where}: {e}")
            continue
        plan.models[model] = model_kind(model, hint or None)
        plan.checked.append(f"model {model} exists ({plan.models[model]} model)")
    for model in sorted(plan.local):
        try:
            check_model(model)
            plan.checked.append(f"model {model} exists (a local directory: used as it is)")
        except ConfigError as e:
            problems.append(f"{where}: {e}")
    for repo, splits in plan.datasets.items():
        try:
            have = dataset_splits(repo)
        except ConfigError as e:
            problems.append(f"{where}: {e}")
            continue
        for split in sorted(splits):
            if not any(s in have for s in _fallbacks(split)):
                problems.append(f"{where}: dataset hf:{repo} has no split {split!r} (it has: {', '.join(sorted(have))})")
        plan.datasets[repo] = set(have)
        plan.checked.append(f"dataset hf:{repo} has {', '.join(sorted(splits))}")
    if problems:
        raise ConfigError("\n".join(problems))


def _fallbacks(split: str) -> list[str]:
    from rlaif.training.datasets import _fallbacks as chain

    return chain(split, split.endswith("_sft"))


def dataset_splits(repo: str) -> list[str]:
    """The splits of a hub dataset, from the local cache or the hub."""
    import datasets

    try:
        return list(datasets.get_dataset_split_names(repo))
    except Exception as e:  # noqa: BLE001 - not cached and no hub: say which
        reason = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise ConfigError(f"dataset hf:{repo} is neither in the local cache nor on a reachable hub ({reason})") from None


# ----------------------------------------------------------------------------- the rehearsal's own home
def build_home(home: Path, plan: Plan, prompts: int) -> dict[str, str]:
    """Stand-ins in `home`'s Hugging Face cache; the environment the commands run in."""
    from rlaif.rehearsal.standins import add_dataset, add_model, seed_of, tiny_model

    hf = home / "hf"
    for i, (model, kind) in enumerate(plan.models.items()):
        add_model(hf, model, tiny_model(home / "models" / str(i), kind, seed_of(model)))
        echo(f"swapped  model {model} -> a tiny {kind} model under the same id")
    rows = max(prompts, DATASET_ROWS)
    for repo, splits in plan.datasets.items():
        add_dataset(hf, repo, {s: first_rows(repo, s, rows) for s in sorted(splits)})
        echo(f"swapped  dataset hf:{repo} -> its first {rows} rows of each split, under the same id")
    env = {**os.environ, "HF_HOME": str(hf), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "CUDA_VISIBLE_DEVICES": "", "TOKENIZERS_PARALLELISM": "false"}
    for name in ("HF_HUB_CACHE", "HF_DATASETS_CACHE", "TRANSFORMERS_CACHE", "VLLM_CPU_KVCACHE_SPACE"):
        env.pop(name, None)
    env.update({var: REHEARSAL_KEY for var in plan.keys})
    return env


def first_rows(repo: str, split: str, n: int) -> list[dict]:
    """The first `n` rows of a hub dataset's split: streamed from the hub, else from the local cache."""
    import datasets

    try:
        return list(datasets.load_dataset(repo, split=split, streaming=True).take(n))
    except Exception:  # noqa: BLE001 - offline: the prepared copy in the cache
        return datasets.load_dataset(repo, split=split).select(range(n)).to_list()


def start_server(plan: Plan):
    """The strict local OpenAI server for every endpoint model, or None when the recipes have none."""
    if not plan.served:
        return None
    from rlaif.rehearsal.openai_server import COMPLETION_MODELS, OpenAIServer

    reasoning = [m for m, r in plan.served.items() if r]
    server = OpenAIServer(models=sorted(plan.served) + list(COMPLETION_MODELS), reasoning_models=reasoning,
                          api_key=REHEARSAL_KEY)
    server.start()
    return server


# ----------------------------------------------------------------------------- the commands
def chain(paths: list[str], recipes: list[Any], overrides: list[str], prompts: int, out: Path,
          base_url: str | None) -> list[list[str]]:
    """The commands a user runs for these recipes, in order, with the CPU's overrides."""
    from rlaif.rehearsal.overrides import cpu_overrides

    rlaif = [sys.executable, "-m", "rlaif"]
    steps, said = [], []
    for path, recipe in zip(paths, recipes):
        stages = {"data"} | {s for s in ("sft", "dpo") if getattr(recipe.train, s) is not None}
        sets, lines = cpu_overrides(recipe, prompts, base_url, stages)
        said += lines
        steps.append(rlaif + ["run", path, "--out", str(out)] + [a for s in overrides + sets for a in ("--set", s)])
    last = recipes[-1].rounds
    if last.on:  # the rounds measured every model already; the last round's model against its start
        steps.append(rlaif + ["evaluate", str(Path(out) / "rounds" / str(last.count)), "--no-win-rate"])
    elif any(r.train.dpo is not None for r in recipes):  # the win rate's answers: MT-Bench's step serves them too
        steps.append(rlaif + ["evaluate", str(out), "--no-win-rate"])
    mt_bench = [j.name for j in recipes[-1].judges if j.kind == "mt_bench_single"]
    if mt_bench and any(r.train.dpo is not None or r.train.sft is not None for r in recipes):
        steps.append(rlaif + ["evaluate", str(out), "--mt-bench", "--limit", "1", "--judge", mt_bench[0]])
    for line in dict.fromkeys(said):
        echo(f"swapped  {line}")
    return steps


def show_rounds(out: Path) -> None:
    """The rounds' table the run wrote, as `rlaif run` shows it."""
    from rlaif.cli.summary import print_rounds

    if (Path(out) / "rounds" / "summary.json").exists():
        print_rounds(str(out))


def run_steps(steps: list[list[str]], env: dict[str, str], out: Path) -> int:
    """Run each command; stop at the first that fails, with its own error lines and exit code."""
    from rich.table import Table

    from rlaif.cli.console import console

    table = Table("command", "exit", "seconds", title=f"rehearsal -> {out}")
    total = time.perf_counter()
    for cmd in steps:
        words = cmd[3:cmd.index("--out")] if "--out" in cmd else cmd[3:]  # the command as the user types it
        shown = "rlaif " + shlex.join(words)
        echo(f"rehearse {shown}")
        start = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        table.add_row(shown, str(proc.returncode), f"{seconds:.0f}")
        if proc.returncode != 0:
            errors = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("error:")]
            console().print(table)
            for line in errors or (proc.stderr.strip().splitlines()[-1:] or ["(no output)"]):
                echo(line)
            return proc.returncode
    console().print(table)
    echo(f"rehearsal passed in {time.perf_counter() - total:.0f} s: every command of the chain ran on stand-ins")
    return 0
