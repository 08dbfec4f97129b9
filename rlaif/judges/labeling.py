"""A human gold set: which pairs of a run a person labels, and where each label goes at once.

    choose_items(store, Choice(...))   -> list[Item]   the pairs to label, the same for the same run and seed
    LabelFile(run, labeler)                          labels/<labeler>.jsonl: read, append one label, one holder
    Session(items, file, ...)                        what the page shows next; resumes where the file ends
    humans_report(store)                             each judge against each labeler, labelers against each other

Items are pairs of one prompt's completions, chosen three ways: `sample`, stratified by the judge's
score margin (quartiles of it) so close calls and clear ones both get labelled, and spread over
prompts; `disagree`, the pairs two judges of the run disagree on most (their score differences, each
judge's scores standardized, furthest apart); `sentinels`, pairs of the run's sentinel set
(`sentinels/set.json`, judges/sentinels.py). Each item is shown with its two completions in an
order drawn per labeler and item from the seed; the label records which one was on the left
(`shown_first`) and names its winner as `completion_a` / `completion_b` of the pair, as
`rlaif agreement --human` reads it.
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import re
import time
from collections import defaultdict, deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from threading import Lock
from typing import Literal

from pydantic import ValidationError

from rlaif.core.errors import ConfigError, RlaifError, validation_message
from rlaif.core.records import Completion, Prompt, ScoreSource, content_hash, derive_seed
from rlaif.core.store import RunStore
from rlaif.generation.ensemble import STAGE as COMPLETIONS
from rlaif.judges.agreement import HumanLabel, human_agreement, labeler_agreement, load_human_labels
from rlaif.judges.registry import get_kind
from rlaif.judges.scores import completion_scores
from rlaif.judges.sentinels import SentinelSet, set_path
from rlaif.judges.stage import STAGE as JUDGEMENTS, stored_manifest
from rlaif.prompts.prompt_sets import PROMPTS

LABELS = "labels"
HOW = ("sample", "disagree", "sentinels")
BINS = 4  # `sample`: margin quartiles
LABELER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True)
class Choice:
    """Which pairs to label: how, how many, by which judge (or two), with which seed."""

    how: str = "sample"
    n: int = 100
    judge: str | None = None
    judges: tuple[str, str] | None = None  # `disagree`
    seed: int = 0
    score: ScoreSource = "auto"


@dataclass(frozen=True)
class Pair:
    prompt_id: str
    a: str  # completion ids, in the order the run's records hold them
    b: str
    margin: float | None = None  # how far apart the judge scored them (`disagree`: how far the judges disagree)

    @property
    def key(self) -> tuple[str, frozenset[str]]:
        return self.prompt_id, frozenset((self.a, self.b))


@dataclass(frozen=True)
class Item:
    """One pair to label, with what the page shows."""

    item_id: str
    prompt: Prompt
    a: Completion
    b: Completion
    margin: float | None = None

    @property
    def key(self) -> tuple[str, frozenset[str]]:
        return self.prompt.prompt_id, frozenset((self.a.completion_id, self.b.completion_id))


# ----------------------------------------------------------------------------- the run's judges
def run_judges(store: RunStore) -> list[str]:
    """The judges whose records the run holds (a report.json in judgements/<name>/)."""
    folder = store.root / JUDGEMENTS
    return sorted(p.name for p in folder.iterdir() if (p / "report.json").is_file()) if folder.is_dir() else []


def default_judge(store: RunStore) -> str:
    """The run's only judge, else the one its recipe binarizes with; several and no recipe: say so."""
    judges = run_judges(store)
    if not judges:
        raise RlaifError(f"{store.root}: no judgements in this run (judge it first: `rlaif run` or `rlaif judge`)")
    if len(judges) == 1:
        return judges[0]
    try:
        recipe = json.loads((store.root / "recipe.json").read_text())
        named = (recipe.get("binarize") or {}).get("judge") or (recipe.get("judges") or [{}])[0].get("name")
    except (OSError, ValueError):
        named = None
    if named in judges:
        return named
    raise RlaifError(f"{store.root}: several judges ({', '.join(judges)}); pass --judge NAME")


def judge_scores(store: RunStore, judge: str, score: ScoreSource = "auto",
                 prompts: set[str] | None = None) -> tuple[dict[str, float], dict[str, list[str]], list]:
    """A judge's score per completion, its completions per prompt (in the records' order), and its
    records, read chunk by chunk; with `prompts`, of those prompts only (a pairwise judge's score
    is over a prompt's pairs, so whole prompts keep it exact)."""
    info, manifest = stored_manifest(store, judge)
    kind = get_kind(info["kind"]).record_type
    scores: dict[str, float] = {}
    by_prompt: dict[str, list[str]] = defaultdict(list)
    kept = []
    for group in manifest.by_group():
        records = [r for r in store.read_manifest(manifest, kind, group) if prompts is None or r.prompt_id in prompts]
        chunk = completion_scores(records, score)
        scores.update(chunk)
        for r in records:
            ids = (r.completion_a, r.completion_b) if hasattr(r, "completion_a") else (r.completion_id,)
            by_prompt[r.prompt_id] += [c for c in ids if c in chunk and c not in by_prompt[r.prompt_id]]
        if prompts is not None:
            kept += records
    return scores, by_prompt, kept


# ----------------------------------------------------------------------------- choosing pairs
def stratified(pairs: list[Pair], n: int, seed: int) -> list[Pair]:
    """`n` pairs, taken in turn from the margin's quartiles (pairs of unknown margin: a stratum of their
    own), at random within each, a prompt not taken yet first."""
    rng = random.Random(seed)
    known = sorted((p for p in pairs if p.margin is not None), key=lambda p: (p.margin, p.prompt_id, p.a, p.b))
    strata = [known[i * len(known) // BINS:(i + 1) * len(known) // BINS] for i in range(BINS)]
    strata.append([p for p in pairs if p.margin is None])
    queues = []
    for s in strata:
        if s:
            rng.shuffle(s)
            queues.append(deque(s))
    out, used = [], set()
    while len(out) < n and queues:
        for q in list(queues):
            if len(out) == n:
                break
            later = next((i for i, p in enumerate(q) if p.prompt_id not in used), 0)
            p = q[later]
            del q[later]
            out.append(p)
            used.add(p.prompt_id)
            if not q:
                queues.remove(q)
    return out


def all_pairs(by_prompt: dict[str, list[str]], scores: dict[str, float]) -> list[Pair]:
    return [Pair(pid, x, y, abs(scores[x] - scores[y]) if x in scores and y in scores else None)
            for pid, ids in by_prompt.items() for x, y in combinations(ids, 2)]


def disagreeing(store: RunStore, judges: tuple[str, str], n: int, choice: Choice) -> list[Pair]:
    """The `n` pairs whose score differences the two judges (each standardized) see furthest apart."""
    (sa, by_prompt, _), (sb, _, _) = (judge_scores(store, j, choice.score) for j in judges)

    def z(s: dict[str, float]) -> dict[str, float]:
        both = [s[c] for c in s if c in sa and c in sb]
        mean = sum(both) / len(both) if both else 0.0
        sd = (sum((x - mean) ** 2 for x in both) / len(both)) ** 0.5 if both else 0.0
        return {c: (v - mean) / (sd or 1.0) for c, v in s.items()}

    za, zb = z(sa), z(sb)
    pairs = [Pair(pid, x, y, abs((za[x] - za[y]) - (zb[x] - zb[y])))
             for pid, ids in by_prompt.items() for x, y in combinations([c for c in ids if c in zb], 2)]
    rng = random.Random(choice.seed)
    tiebreak = {p: rng.random() for p in pairs}
    return sorted(pairs, key=lambda p: (-p.margin, tiebreak[p]))[:n]


def sentinel_set(store: RunStore) -> tuple[list[Prompt], list[Completion]]:
    """The run's sentinel set (judges/sentinels.py keeps it), or a one-line error."""
    path = set_path(store.root)
    if not path.is_file():
        raise RlaifError(f"{path}: no sentinel set in this run (a judge block's `sentinels: N` keeps one)")
    try:
        kept = SentinelSet.model_validate_json(path.read_text())
    except ValidationError as e:
        raise ConfigError(validation_message(str(path), e).splitlines()[0]) from None
    return kept.prompts, kept.completions


def choose_items(store: RunStore, choice: Choice) -> list[Item]:
    """The pairs to label, in the order the page shows them."""
    if choice.how not in HOW:
        raise ConfigError(f"--items {choice.how!r}: one of {', '.join(HOW)}")
    if choice.n < 1:
        raise ConfigError(f"--n {choice.n}: at least 1 pair")
    if not store.root.is_dir():
        raise ConfigError(f"{store.root}: no such run directory")
    prompts: dict[str, Prompt] = {}
    completions: dict[str, Completion] = {}
    if choice.how == "sentinels":
        ps, cs = sentinel_set(store)
        prompts, completions = {p.prompt_id: p for p in ps}, {c.completion_id: c for c in cs if c.text}
        by_prompt: dict[str, list[str]] = defaultdict(list)
        for c in completions.values():
            by_prompt[c.prompt_id].append(c.completion_id)
        scores = judge_scores(store, choice.judge, choice.score)[0] if choice.judge else {}
        pairs = stratified(all_pairs(by_prompt, scores), choice.n, choice.seed)
    elif choice.how == "disagree":
        if not choice.judges or len(set(choice.judges)) != 2:
            raise ConfigError("--items disagree: name two judges of the run, --judges A B")
        pairs = disagreeing(store, choice.judges, choice.n, choice)
    else:
        scores, by_prompt, _ = judge_scores(store, choice.judge or default_judge(store), choice.score)
        pairs = stratified(all_pairs(by_prompt, scores), choice.n, choice.seed)
    if choice.how != "sentinels":
        prompts, completions = _read_texts(store, pairs)
    items = []
    for p in pairs:
        a, b, prompt = completions.get(p.a), completions.get(p.b), prompts.get(p.prompt_id)
        if a is not None and b is not None and prompt is not None and a.text and b.text:
            items.append(Item(content_hash(p.prompt_id, p.a, p.b), prompt, a, b, p.margin))
    return items


def _read_texts(store: RunStore, pairs: list[Pair]) -> tuple[dict[str, Prompt], dict[str, Completion]]:
    """The prompts and completions the pairs need, read shard by shard (memory: what is kept)."""
    want_p, want_c = {p.prompt_id for p in pairs}, {c for p in pairs for c in (p.a, p.b)}
    prompts = {p.prompt_id: p for key in store.keys(PROMPTS) for p in store.iter(PROMPTS, key, Prompt)
               if p.prompt_id in want_p}
    completions = {c.completion_id: c for key in store.keys(COMPLETIONS)
                   for c in store.iter(COMPLETIONS, key, Completion) if c.completion_id in want_c and c.text}
    return prompts, completions


# ----------------------------------------------------------------------------- the label file
def check_labeler(name: str) -> str:
    if not LABELER.fullmatch(name or ""):
        raise ConfigError(f"--labeler {name!r}: a plain name (letters, digits, '.', '_', '-'; up to 64; no '/')")
    return name


class LabelFile:
    """`<run>/labels/<labeler>.jsonl`: one JSON line per label, appended and fsynced as it is made."""

    def __init__(self, run: str | Path, labeler: str):
        self.labeler = check_labeler(labeler)
        self.path = Path(run) / LABELS / f"{labeler}.jsonl"

    def read(self) -> list[HumanLabel]:
        return load_human_labels(self.path) if self.path.exists() else []

    def append(self, label: HumanLabel) -> None:
        """One write() of a whole line with O_APPEND, then fsync: a label made is a label kept."""
        new = not self.path.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (label.model_dump_json(exclude_none=True) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        if new:
            dfd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)

    @contextmanager
    def hold(self) -> Iterator[None]:
        """One page per labeler and run at a time (a second would append the same items twice)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path.parent / f".{self.labeler}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
                raise RlaifError(f"{self.path}: {self.labeler} is labeling this run already (pid {holder})") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            yield
        finally:
            os.close(fd)


# ----------------------------------------------------------------------------- a labeling session
Pick = Literal["left", "right", "tie", "skip"]  # what the labeler pressed: the left or right answer is better


@dataclass
class Session:
    """The items, what this labeler labelled already (from the file: a rerun resumes) and skipped
    (this session only: a skipped pair comes back next time); what to show next."""

    items: list[Item]
    file: LabelFile
    how: str = "sample"
    seed: int = 0
    labeled: set[str] = field(default_factory=set)
    skipped: set[str] = field(default_factory=set)
    lock: Lock = field(default_factory=Lock)

    def __post_init__(self) -> None:
        done = {h.pair for h in self.file.read()}
        self.labeled = {i.item_id for i in self.items if i.key in done}
        self.by_id = {i.item_id: i for i in self.items}

    def left(self, item: Item) -> Literal["a", "b"]:
        """Which completion of the pair the page shows on the left: drawn per labeler and item."""
        return "a" if random.Random(derive_seed(self.seed, self.file.labeler, item.item_id)).random() < 0.5 else "b"

    def current(self) -> Item | None:
        return next((i for i in self.items if i.item_id not in self.labeled and i.item_id not in self.skipped), None)

    @property
    def complete(self) -> bool:
        return len(self.labeled) == len(self.items)

    def answer(self, item_id: str, choice: Pick) -> HumanLabel | None:
        """Record a choice on the item shown (a stale or repeated one changes nothing); the label written."""
        with self.lock:
            item = self.by_id.get(item_id)
            if item is None or item_id in self.labeled or item_id in self.skipped:
                return None
            if choice == "skip":
                self.skipped.add(item_id)
                return None
            left = self.left(item)
            winner = {"left": left, "right": "b" if left == "a" else "a", "tie": "tie"}[choice]
            label = HumanLabel(prompt_id=item.prompt.prompt_id, completion_a=item.a.completion_id,
                               completion_b=item.b.completion_id, winner=winner, labeler=self.file.labeler,
                               shown_first=left, items=self.how,
                               time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
            self.file.append(label)
            self.labeled.add(item_id)
            return label


# ----------------------------------------------------------------------------- what the labels say
def humans_report(store: RunStore, score: ScoreSource = "auto") -> dict | None:
    """Each judge's agreement with each labeler (`labels/*.jsonl`), and each two labelers' on the pairs
    both labelled; None when the run has no labels. A label file that does not read is named, not fatal
    (the dataset is published all the same)."""
    folder = store.root / LABELS
    files = sorted(folder.glob("*.jsonl")) if folder.is_dir() else []
    labels, unreadable = {}, {}
    for f in files:
        try:
            labels[f.stem] = load_human_labels(f)
        except ConfigError as e:
            unreadable[f.name] = str(e)
    if not files:
        return None
    labelled = {h.prompt_id for ls in labels.values() for h in ls}
    judges = {}
    for judge in run_judges(store):
        scores, _, records = judge_scores(store, judge, score, labelled)
        judges[judge] = {}
        for name, ls in labels.items():
            n, rate = human_agreement(records, scores, ls)
            judges[judge][name] = {"pairs": n, "agreement": rate}
    between = [r.model_dump() for x, y in combinations(sorted(labels), 2)
               if (r := labeler_agreement(labels[x], labels[y], (x, y))).pairs]
    return {"labels": {k: len(v) for k, v in labels.items()}, "judges": judges, "between_labelers": between,
            "unreadable": unreadable}
