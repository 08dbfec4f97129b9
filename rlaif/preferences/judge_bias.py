"""A judge's biases measured on a run directory, one prompt chunk at a time (for `rlaif agreement`).

    run_judge_bias(store, judge, recipe_info) -> BiasReport

The same measures as a dataset card's (judges/bias.py), for any judge that judged the run's
completions, binarized or not: each of its judgement shards covers one prompt chunk, so the chunk's
prompts, completions and the judge's records are read together, binarized with the recipe's
`binarize:` block (this judge's pairs: what its dataset would hold) and reduced to numbers before
the next chunk is read. Self-preference maps the recipe's members to their model ids; without
`recipe_info` it is left out.
"""

from __future__ import annotations

from rlaif.core.records import Completion, Prompt
from rlaif.core.store import RunStore
from rlaif.generation.ensemble import STAGE as COMPLETIONS
from rlaif.generation.prompt_sets import PROMPTS
from rlaif.judges.bias import BiasData, BiasReport
from rlaif.judges.registry import get_kind
from rlaif.judges.stage import stored_manifest
from rlaif.preferences.binarize import BinarizeSpec, binarize
from rlaif.preferences.versions import members_of


def completion_shards(store: RunStore) -> dict[str, list[str]]:
    """prompt chunk -> the keys of its completion shards (from their metadata)."""
    out: dict[str, list[str]] = {}
    for key in store.keys(COMPLETIONS):
        info = store.info(COMPLETIONS, key, Completion)
        if info is not None:
            out.setdefault(info.group, []).append(key)
    return out


def run_judge_bias(store: RunStore, judge: str, recipe_info: dict | None = None) -> BiasReport:
    info, manifest = stored_manifest(store, judge)
    kind = get_kind(info["kind"]).record_type
    spec = BinarizeSpec(**{**(recipe_info or {}).get("binarize", {}), "judge": judge, "push_to_hub": None})
    data = BiasData(spec.score, spec.aspect)
    shards = completion_shards(store)
    for group, judged in manifest.by_group().items():
        prompts = store.read(PROMPTS, group, Prompt) if store.has(PROMPTS, group) else []
        completions = list({c.completion_id: c for key in shards.get(group, [])
                            for c in store.iter(COMPLETIONS, key, Completion)}.values())
        records = [r for s in judged for r in store.iter(manifest.stage, s.key, kind)]
        pairs, _ = binarize(prompts, completions, records, spec)
        data.add(records, completions, pairs)
    return data.report(members_of(recipe_info))
