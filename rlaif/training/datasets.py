"""Any preference or SFT dataset, in TRL's explicit conversational form, whatever layout it came in.

    load_preferences(source, split, run_dataset) -> Dataset[prompt, chosen, rejected]
    load_sft(source, split, run_dataset)         -> Dataset[prompt, completion] or Dataset[messages]
    source_key(source, split, run_dataset)       -> what the data is, for a training stage's inputs hash

`prompt` is the conversation up to the last user turn (a list of {role, content}); `chosen`,
`rejected` and `completion` are one assistant message each, as a one-message list; `messages` is a
whole conversation. That is the form rlaif.preferences writes, and the one TRL 1.16's trainers read
without guessing: its DPOTrainer fails on HuggingFaceH4/ultrafeedback_binarized as published (a
string `prompt` beside whole conversations), so every layout is mapped before training.

Sources (`source`):
    None            the run's own dataset (`run_dataset`, a save_to_disk DatasetDict)
    <dir>           a save_to_disk dataset, or a folder of parquet / jsonl / csv files that
                    `datasets.load_dataset(<dir>)` reads (split names from the file names)
    <file>          one .jsonl / .json / .parquet / .csv file (its rows are the split, whatever its name)
    hf:<id>         `datasets.load_dataset(<id>, split=split)`
A split the source lacks falls back along the alignment-handbook's names: `train_prefs` -> `train`,
`train_sft` -> `train_prefs` -> `train` (the chosen answers of the preferences), `test_*` likewise.

Preference layouts, tried in this order (the one used is logged):
    explicit conversational     prompt, chosen, rejected as message lists (rlaif's own, TRL's
                                explicit-prompt form); a chosen/rejected that repeats the prompt is cut
    HuggingFaceH4/ultrafeedback_binarized
                                string prompt; chosen/rejected whole conversations [user, assistant];
                                prompt_id, messages, score_chosen, score_rejected beside them
    string prompt + messages    string prompt; chosen/rejected whole conversations or assistant-only lists
    standard text (TRL)         prompt, chosen, rejected strings (optional `system` string)
    question + answers (Intel/orca_dpo_pairs)
                                question, chosen, rejected strings (optional `system` string)
    implicit conversational (TRL)
                                chosen, rejected whole conversations, no prompt: the prompt is their
                                shared turns before the last
    Human/Assistant text (Anthropic/hh-rlhf)
                                chosen, rejected strings of "\\n\\nHuman: ... \\n\\nAssistant: ..." turns
SFT layouts, in this order:
    prompt + completion messages     rlaif's train_sft, TRL's conversational prompt-completion
    prompt + completion text (TRL)   TRL's standard prompt-completion (optional `system` string)
    chosen side of <layout>          any preference layout above, its chosen answer as the completion
    HuggingFaceH4/ultrachat_200k     string prompt, prompt_id, messages -> messages
    messages conversations           messages -> messages
    ShareGPT conversations           `conversations` of {from: human|gpt|system, value} -> messages
    Alpaca                           instruction, optional input, output strings
Prompt + completion keeps TRL's loss on the answer only; whole `messages` train on every token
(as Zephyr's dSFT does on UltraChat).

What the data is (`source_key`), so a training stage retrains when its data changes and only then:
a dataset version (the run's own, or any folder with rlaif's manifest.json) by its inputs hash;
other local files by their paths, sizes and modification times (no bytes are read); `hf:<id>` by
the Hub commit it resolves to (asked of the Hub, else read from the local Hugging Face cache; with
neither, by its id alone, which is logged).

Every row is checked as it is mapped; a bad one is a ConfigError naming the source, split, row and
field. The mapped rows are written to datasets' temporary cache folder (removed when the process
ends), never into the source's folder, and read memory-mapped.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlaif.core.errors import ConfigError

log = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "bing": "assistant", "bard": "assistant"}
FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
HH_TURN = re.compile(r"\n\n(Human|Assistant): ?")


@dataclass(frozen=True)
class Where:
    """Where a row came from, for one-line errors."""

    source: str
    split: str

    def error(self, row: int, field: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.source}, split {self.split}, row {row}, field '{field}': {problem}")


Row = dict[str, Any]
Convert = Callable[[Row, int, Where], Row]


@dataclass(frozen=True)
class Layout:
    """A known column layout: which columns of which kind it needs, and how a row converts."""

    name: str
    kinds: dict[str, str]  # column -> "text" | "messages" | "sharegpt"
    convert: Convert
    output: str  # "prefs" | "prompt_completion" | "messages"
    also: tuple[str, ...] = ()  # further columns that must be present (any kind) for this name to apply
    absent: tuple[str, ...] = ()  # columns whose presence means another layout

    def matches(self, kinds: dict[str, str]) -> bool:
        return (all(kinds.get(c) == k for c, k in self.kinds.items()) and all(c in kinds for c in self.also)
                and not any(c in kinds for c in self.absent))

    def describe(self) -> str:
        cols = ", ".join([*(f"{c} ({k})" for c, k in self.kinds.items()), *self.also])
        return f"{self.name}: {cols}"


# ----------------------------------------------------------------------------- rows: checks and pieces
def _messages(value: Any, row: int, field: str, where: Where) -> list[dict[str, str]]:
    """A list of {role, content} with known roles and string contents, reduced to those two keys."""
    if not isinstance(value, list) or not value:
        raise where.error(row, field, "must be a non-empty list of {role, content} messages")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            got = {k: m.get(k) for k in ("role", "content")} if isinstance(m, dict) else m
            raise where.error(row, f"{field}[{i}]", f"must be {{role: system|user|assistant, content: string}}, "
                                                    f"got {str(got)[:80]}")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def _text(value: Any, row: int, field: str, where: Where) -> str:
    if value is None:
        raise where.error(row, field, "missing")
    if not isinstance(value, str):
        raise where.error(row, field, f"must be a string, got {type(value).__name__}")
    if not value.strip():
        raise where.error(row, field, "is empty")
    return value


def _prompt_ok(prompt: list[dict], row: int, field: str, where: Where) -> list[dict]:
    if not prompt or prompt[-1]["role"] != "user":
        raise where.error(row, field, "the prompt must end with a user turn")
    return prompt


def _split_answer(conv: list[dict], row: int, field: str, where: Where) -> tuple[list[dict], list[dict]]:
    """(the turns before the answer, [the answer]) of a whole conversation ending with an assistant turn."""
    if conv[-1]["role"] != "assistant":
        raise where.error(row, field, "must end with an assistant message (the answer)")
    return _prompt_ok(conv[:-1], row, field, where), conv[-1:]


def _answer(prompt: list[dict], value: Any, row: int, field: str, where: Where) -> list[dict]:
    """One assistant message, from an answer-only list or a conversation that starts with `prompt`."""
    msgs = _messages(value, row, field, where)
    if len(msgs) == 1:
        if msgs[0]["role"] != "assistant":
            raise where.error(row, field, f"must be an assistant message, got role {msgs[0]['role']!r}")
        return msgs
    before, answer = _split_answer(msgs, row, field, where)
    if before != prompt:
        raise where.error(row, field, "a whole conversation whose turns before the answer differ from the prompt")
    return answer


def _pair(prompt: list[dict], chosen: list[dict], rejected: list[dict]) -> Row:
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def _with_system(row: Row, user: str) -> list[dict]:
    system = row.get("system")
    head = [{"role": "system", "content": system}] if isinstance(system, str) and system.strip() else []
    return head + [{"role": "user", "content": user}]


# ----------------------------------------------------------------------------- preference layouts
def _explicit(row: Row, i: int, w: Where) -> Row:
    prompt = _prompt_ok(_messages(row["prompt"], i, "prompt", w), i, "prompt", w)
    return _pair(prompt, _answer(prompt, row["chosen"], i, "chosen", w), _answer(prompt, row["rejected"], i, "rejected", w))


def _string_prompt(row: Row, i: int, w: Where) -> Row:
    """A whole conversation carries its own prompt (system and earlier turns included); an
    assistant-only list answers the string prompt as one user turn."""
    text = _text(row["prompt"], i, "prompt", w)
    chosen = _messages(row["chosen"], i, "chosen", w)
    if len(chosen) > 1:
        prompt, answer = _split_answer(chosen, i, "chosen", w)
        return _pair(prompt, answer, _answer(prompt, row["rejected"], i, "rejected", w))
    prompt = [{"role": "user", "content": text}]
    return _pair(prompt, _answer(prompt, chosen, i, "chosen", w), _answer(prompt, row["rejected"], i, "rejected", w))


def _standard(column: str) -> Convert:
    def convert(row: Row, i: int, w: Where) -> Row:
        prompt = _with_system(row, _text(row[column], i, column, w))
        return _pair(prompt, [{"role": "assistant", "content": _text(row["chosen"], i, "chosen", w)}],
                     [{"role": "assistant", "content": _text(row["rejected"], i, "rejected", w)}])
    return convert


def _implicit(row: Row, i: int, w: Where) -> Row:
    prompt, chosen = _split_answer(_messages(row["chosen"], i, "chosen", w), i, "chosen", w)
    return _pair(prompt, chosen, _answer(prompt, row["rejected"], i, "rejected", w))


def _hh_turns(text: Any, row: int, field: str, where: Where) -> list[dict]:
    text = _text(text, row, field, where)
    parts = HH_TURN.split(text)
    if parts[0].strip() or len(parts) < 5:  # "", Human, q, Assistant, a, ...
        raise where.error(row, field, "not in Anthropic/hh-rlhf form ('\\n\\nHuman: ...\\n\\nAssistant: ...')")
    roles = {"Human": "user", "Assistant": "assistant"}
    return [{"role": roles[r], "content": c.strip()} for r, c in zip(parts[1::2], parts[2::2])]


def _hh(row: Row, i: int, w: Where) -> Row:
    prompt, chosen = _split_answer(_hh_turns(row["chosen"], i, "chosen", w), i, "chosen", w)
    rejected = _hh_turns(row["rejected"], i, "rejected", w)
    return _pair(prompt, chosen, _answer(prompt, rejected, i, "rejected", w))


UF_COLUMNS = ("prompt_id", "messages", "score_chosen", "score_rejected")
PREF_LAYOUTS = [
    Layout("explicit conversational", {"prompt": "messages", "chosen": "messages", "rejected": "messages"},
           _explicit, "prefs"),
    Layout("HuggingFaceH4/ultrafeedback_binarized", {"prompt": "text", "chosen": "messages", "rejected": "messages"},
           _string_prompt, "prefs", also=UF_COLUMNS),
    Layout("string prompt + messages", {"prompt": "text", "chosen": "messages", "rejected": "messages"},
           _string_prompt, "prefs"),
    Layout("standard text (TRL)", {"prompt": "text", "chosen": "text", "rejected": "text"}, _standard("prompt"), "prefs"),
    Layout("question + answers (Intel/orca_dpo_pairs)", {"question": "text", "chosen": "text", "rejected": "text"},
           _standard("question"), "prefs", absent=("prompt",)),
    Layout("implicit conversational (TRL)", {"chosen": "messages", "rejected": "messages"}, _implicit, "prefs",
           absent=("prompt",)),
    Layout("Human/Assistant text (Anthropic/hh-rlhf)", {"chosen": "text", "rejected": "text"}, _hh, "prefs",
           absent=("prompt", "question")),
]


# ----------------------------------------------------------------------------- SFT layouts
def _prompt_completion_messages(row: Row, i: int, w: Where) -> Row:
    prompt = _prompt_ok(_messages(row["prompt"], i, "prompt", w), i, "prompt", w)
    return {"prompt": prompt, "completion": _answer(prompt, row["completion"], i, "completion", w)}


def _prompt_completion_text(row: Row, i: int, w: Where) -> Row:
    return {"prompt": _with_system(row, _text(row["prompt"], i, "prompt", w)),
            "completion": [{"role": "assistant", "content": _text(row["completion"], i, "completion", w)}]}


def _chosen_side(layout: Layout) -> Convert:
    def convert(row: Row, i: int, w: Where) -> Row:
        pair = layout.convert(row, i, w)
        return {"prompt": pair["prompt"], "completion": pair["chosen"]}
    return convert


def _conversation(msgs: list[dict], i: int, field: str, w: Where) -> Row:
    if not any(m["role"] == "assistant" for m in msgs):
        raise w.error(i, field, "has no assistant turn to learn from")
    return {"messages": msgs}


def _messages_row(row: Row, i: int, w: Where) -> Row:
    return _conversation(_messages(row["messages"], i, "messages", w), i, "messages", w)


def _sharegpt(row: Row, i: int, w: Where) -> Row:
    value = row["conversations"]
    if not isinstance(value, list) or not value:
        raise w.error(i, "conversations", "must be a non-empty list of {from, value}")
    msgs = []
    for n, m in enumerate(value):
        role = SHAREGPT_ROLES.get(str(m.get("from", "")).lower()) if isinstance(m, dict) else None
        if role is None or not isinstance(m.get("value"), str):
            raise w.error(i, f"conversations[{n}]", f"must be {{from: {'|'.join(SHAREGPT_ROLES)}, value: string}}")
        msgs.append({"role": role, "content": m["value"]})
    return _conversation(msgs, i, "conversations", w)


def _alpaca(row: Row, i: int, w: Where) -> Row:
    instruction = _text(row["instruction"], i, "instruction", w)
    extra = row.get("input")
    user = f"{instruction}\n\n{extra}" if isinstance(extra, str) and extra.strip() else instruction
    return {"prompt": [{"role": "user", "content": user}],
            "completion": [{"role": "assistant", "content": _text(row["output"], i, "output", w)}]}


SFT_LAYOUTS = [
    Layout("prompt + completion messages", {"prompt": "messages", "completion": "messages"},
           _prompt_completion_messages, "prompt_completion"),
    Layout("prompt + completion text (TRL)", {"prompt": "text", "completion": "text"},
           _prompt_completion_text, "prompt_completion"),
    *[Layout(f"chosen side of {p.name}", p.kinds, _chosen_side(p), "prompt_completion", p.also, p.absent)
      for p in PREF_LAYOUTS],
    Layout("HuggingFaceH4/ultrachat_200k", {"prompt": "text", "messages": "messages"}, _messages_row, "messages",
           also=("prompt_id",)),
    Layout("messages conversations", {"messages": "messages"}, _messages_row, "messages"),
    Layout("ShareGPT conversations", {"conversations": "sharegpt"}, _sharegpt, "messages"),
    Layout("Alpaca", {"instruction": "text", "output": "text"}, _alpaca, "prompt_completion"),
]


# ----------------------------------------------------------------------------- columns, sources, mapping
def _kind(feature: Any) -> str:
    """A column's kind from its features: text, messages ({role, content} list), sharegpt, or other."""
    from datasets import LargeList, List, Sequence, Value

    if isinstance(feature, Value):
        return "text" if feature.dtype in ("string", "large_string") else "other"
    inner = feature.feature if isinstance(feature, (List, LargeList, Sequence)) else \
        feature[0] if isinstance(feature, list) and feature else None
    if isinstance(inner, dict):
        if {"role", "content"} <= set(inner):
            return "messages"
        if {"from", "value"} <= set(inner):
            return "sharegpt"
    return "other"


def column_kinds(ds: Any) -> dict[str, str]:
    return {name: _kind(f) for name, f in ds.features.items()}


def find_layout(kinds: dict[str, str], layouts: list[Layout]) -> Layout | None:
    return next((lay for lay in layouts if lay.matches(kinds)), None)


def _fallbacks(split: str, sft: bool) -> list[str]:
    side = "test" if split.startswith("test") else "train"
    chain = [split]
    if sft and split.endswith("_sft"):
        chain.append(split[:-4] + "_prefs")
    if split in (f"{side}_prefs", f"{side}_sft"):
        chain.append(side)
    return list(dict.fromkeys(chain))


def _pick(splits: dict, split: str, sft: bool, label: str) -> Any:
    for name in _fallbacks(split, sft):
        if name in splits:
            if name != split:
                log.info("%s: no split %s, using %s", label, split, name)
            return splits[name], name
    raise ConfigError(f"{label}: no split {split!r} (have: {sorted(splits)})")


def open_split(source: str | None, split: str, run_dataset: str | Path, sft: bool = False) -> tuple[Any, str, str]:
    """(the split as a Dataset, a label naming the source, the split's name as found)."""
    import datasets

    if source is not None and source.startswith("hf:"):
        name = source[3:]
        last: Exception | None = None
        for s in _fallbacks(split, sft):
            try:
                ds = datasets.load_dataset(name, split=s)
            except ValueError as e:
                if "split" not in str(e).lower():
                    raise ConfigError(f"{source}: {e}") from None
                last = e
                continue
            if s != split:
                log.info("%s: no split %s, using %s", source, split, s)
            return ds, source, s
        raise ConfigError(f"{source}: {last}")
    label = str(run_dataset) if source is None else source
    path = Path(run_dataset if source is None else source).expanduser()
    if not path.exists():
        hint = "; run the binarize stage first" if source is None else ""
        raise ConfigError(f"{label}: no dataset here{hint}")
    path = path.resolve()  # the run's dataset may be a symlink to its latest version
    if path.is_file():
        builder = FILE_BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise ConfigError(f"{label}: not a dataset file (use one of {sorted(FILE_BUILDERS)}, or a folder)")
        return datasets.load_dataset(builder, data_files=str(path), split="train"), label, split
    if (path / "dataset_dict.json").exists():
        ds, found = _pick(datasets.load_from_disk(str(path)), split, sft, label)
        return ds, label, found
    if (path / "state.json").exists():  # one saved split: it is the split asked for
        return datasets.load_from_disk(str(path)), label, split
    try:
        dd = datasets.load_dataset(str(path))
    except Exception as e:  # noqa: BLE001 - whatever datasets says of an unreadable folder, in one line
        raise ConfigError(f"{label}: not a saved dataset, nor a folder `datasets.load_dataset` reads: "
                          f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    ds, found = _pick(dd, split, sft, label)
    return ds, label, found


def _features(output: str) -> Any:
    from rlaif.preferences.rows import features

    return features({"prefs": ("prompt", "chosen", "rejected"), "prompt_completion": ("prompt", "completion"),
                     "messages": ("messages",)}[output])


def apply_layout(ds: Any, layout: Layout, where: Where) -> Any:
    """Every row converted and checked, written to datasets' temporary folder (gone at process exit)."""
    from datasets.fingerprint import get_temporary_cache_files_directory

    key = uuid.uuid4().hex  # a fresh name: never another mapping's file, and nothing to hash
    path = Path(get_temporary_cache_files_directory()) / f"rlaif-{key}.arrow"
    return ds.map(lambda row, i: layout.convert(row, i, where), with_indices=True, remove_columns=ds.column_names,
                  features=_features(layout.output), cache_file_name=str(path), load_from_cache_file=False,
                  new_fingerprint=key, desc=f"mapping {layout.name}")


def _load(source: str | None, split: str, run_dataset: str | Path, layouts: list[Layout], what: str) -> Any:
    ds, label, found = open_split(source, split, run_dataset, sft=what == "SFT")
    kinds = column_kinds(ds)
    layout = find_layout(kinds, layouts)
    if layout is None:
        have = ", ".join(f"{c} ({k})" for c, k in kinds.items()) or "none"
        expected = "; ".join(lay.describe() for lay in layouts if not lay.name.startswith("chosen side of"))
        extra = "; or any preference layout (its chosen side)" if what == "SFT" else ""
        raise ConfigError(f"{label}, split {found}: no known {what} layout for columns [{have}]; expected one of: "
                          f"{expected}{extra}")
    log.info("%s, split %s: %d rows mapped as %s", label, found, len(ds), layout.name)
    return apply_layout(ds, layout, Where(label, found))


def load_preferences(source: str | None, split: str, run_dataset: str | Path) -> Any:
    """A preference split as a Dataset with exactly `prompt`, `chosen`, `rejected` (see the module doc)."""
    return _load(source, split, run_dataset, PREF_LAYOUTS, "preference")


def load_sft(source: str | None, split: str, run_dataset: str | Path) -> Any:
    """An SFT split as `prompt` + `completion` (loss on the answer) or `messages` (whole conversations)."""
    return _load(source, split, run_dataset, SFT_LAYOUTS, "SFT")


# ----------------------------------------------------------------------------- what the data is
def source_key(source: str | None, split: str, run_dataset: str | Path) -> str:
    """A hash of what `load_preferences` / `load_sft` would read for (source, split): see the module doc."""
    import json

    from rlaif.core.records import content_hash

    if source is not None and source.startswith("hf:"):
        return content_hash("hf", source[3:], split, hub_revision(source[3:]))
    path = Path(run_dataset if source is None else source).expanduser()
    if not path.exists():
        hint = "; run the binarize stage first" if source is None else ""
        raise ConfigError(f"{path}: no dataset here{hint}")
    path = path.resolve()
    try:
        return content_hash("version", json.loads((path / "manifest.json").read_text())["inputs_hash"], split)
    except (OSError, ValueError, KeyError, TypeError):
        pass
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return content_hash("files", split, [(str(p.relative_to(path.parent)), p.stat().st_size, p.stat().st_mtime_ns)
                                         for p in files])


def hub_revision(repo_id: str) -> str | None:
    """The commit a Hub dataset's main branch is at: asked of the Hub, else the local cache's ref."""
    import huggingface_hub
    from huggingface_hub import constants

    try:
        return huggingface_hub.HfApi().dataset_info(repo_id, timeout=10).sha
    except Exception:  # noqa: BLE001 - offline, gated, or no such repo: the cache may still know
        pass
    ref = Path(constants.HF_HUB_CACHE) / f"datasets--{repo_id.replace('/', '--')}" / "refs" / "main"
    try:
        return ref.read_text().strip()
    except OSError:
        log.warning("hf:%s: no Hub revision known (offline, not in the cache); the training stage is keyed "
                    "on its id alone", repo_id)
        return None
