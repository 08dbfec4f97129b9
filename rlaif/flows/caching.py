"""Prefect task caching, as an accelerator on top of the stages' own state.

A task's cache key exists only when its stage says, from its shards, that everything it would
write is there and holds no row to send again; the key then covers the task's inputs (manifest
hashes), its own settings and the shards found. Anything missing or retryable gives no key, so
the task runs and its stage computes just that. A deleted shard, a 503 row, a changed judge
setting: each makes the key disappear or change, never serves a stale result.

Results (the manifests) are written as JSON under `<run dir>/.prefect/results/`, next to the shards.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rlaif.core.records import content_hash
from rlaif.core.store import RunStore

CACHE_VERSION = 2  # bump when what a task returns changes shape: old cache entries are then missed
CACHED = dict(persist_result=True, result_serializer="json")


def result_storage(out: str | Path) -> Path:
    """Where task results go: a plain path, which Prefect turns into a LocalFileSystem block."""
    return Path(out).resolve() / ".prefect" / "results"


def _key(stage: str, *parts: Any) -> str:
    return f"{stage}-{content_hash(CACHE_VERSION, *parts)}"


def generate_key(ctx: Any, p: dict) -> str | None:
    from rlaif.generation.ensemble import manifest_of, plan_generation

    r = p["recipe"]
    units = plan_generation(p["prompts"], r.generators, RunStore(p["out"]), r.models_per_prompt, r.seed)
    if any(u.todo for u in units):
        return None
    return _key("generate", p["prompts"].hash, [(g.name, g.settings_hash()) for g in r.generators],
                r.models_per_prompt, r.seed, manifest_of(units).hash)


def judge_key(ctx: Any, p: dict) -> str | None:
    from rlaif.judges.stage import plan_judging

    spec = p["spec"]
    units = plan_judging(p["completions"], spec, RunStore(p["out"]))
    if any(u.todo for u in units):
        return None
    return _key(f"judge-{spec.name}", spec.settings_hash(), p["completions"].hash, [u.info.sha for u in units])


def publish_key(ctx: Any, p: dict) -> str | None:
    from rlaif.preferences.versions import inputs_hash, latest_version, version_manifest

    if p.get("force") or (p["spec"].push_to_hub and p.get("push", True)):
        return None  # asked to write or push: always run
    _, h = inputs_hash(p["prompts"], p["completions"], p["judgements"], p["hygiene"], p["spec"], p["recipe"].hygiene)
    latest = latest_version(p["out"])
    if latest is None or version_manifest(latest).get("inputs_hash") != h:
        return None
    link = Path(p["out"]) / "dataset"
    if not link.exists() or link.resolve() != latest.resolve():
        return None  # the pointer moved (a judge swap published since): publish takes it back
    return _key("publish", h, latest.name)


def train_key(ctx: Any, p: dict) -> str | None:
    from rlaif.training.common import is_trained

    variant = p.get("variant")  # a dDPO variant: dpo/<variant>/
    path = Path(p["out"]) / p["stage"] / (variant or "")
    return _key("train", p["stage"], variant or "", p["inputs"]) if is_trained(path, p["inputs"]) else None
