"""Publishing records made in memory (by hand, in a test): hygiene, the records written into a run
store as chunks, then `rlaif.preferences.versions.publish`, as a run's stages would have left them."""

from __future__ import annotations

from pathlib import Path

from rlaif.core.records import Completion, PairJudgement, Prompt, content_hash
from rlaif.core.store import Manifest, RunStore
from rlaif.preferences.binarize import BinarizeSpec
from rlaif.preferences.versions import VersionInputs, publish
from rlaif.prompts.hygiene import HygieneSpec
from rlaif.prompts.prompt_sets import PROMPTS


def publish_records(run_dir: str | Path, recipe_info: dict, prompts: list[Prompt], completions: list[Completion],
                    judgements: list, spec: BinarizeSpec, hygiene: HygieneSpec | None = None,
                    eval_prompts: list[Prompt] | None = None, shard_size: int = 256, force: bool = False,
                    push: bool = True) -> Path:
    """Publish records that are in memory (made elsewhere, or by hand): hygiene, then the records
    written into the run store as chunks, then `publish`."""
    from rlaif.prompts.hygiene import clean_prompts
    from rlaif.prompts.prompt_sets import write_prompt_chunks

    store, hygiene = RunStore(run_dir), hygiene or HygieneSpec()
    kept, hy = clean_prompts(prompts, hygiene, eval_prompts)
    pm = write_prompt_chunks(kept, store, shard_size)
    judge = spec.judge or (judgements[0].judge if judgements else "judge")
    pairwise = bool(judgements) and isinstance(judgements[0], PairJudgement)
    chunk_of = {}
    for s in pm.shards:
        for p in store.iter(PROMPTS, s.key, Prompt):
            chunk_of[p.prompt_id] = s.key
    cm, jm = Manifest(stage="completions"), Manifest(stage=f"judgements/{judge}")
    for s in pm.shards:
        cs = [c for c in completions if chunk_of.get(c.prompt_id) == s.key]
        js = [j for j in judgements if chunk_of.get(j.prompt_id) == s.key]
        cm.shards.append(store.write(cm.stage, content_hash("records", [c.completion_id for c in cs]), cs, group=s.key))
        jm.shards.append(store.write(jm.stage, content_hash("records", [j.judgement_id for j in js]), js, group=s.key))
    made = VersionInputs(pm, hy, cm, jm, spec.model_copy(update={"judge": spec.judge or judge}), hygiene, pairwise)
    return publish(store, recipe_info, made, force, push)
