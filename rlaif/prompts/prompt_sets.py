"""Prompt sets: a bundled set (MT-Bench's questions, our starter set), any JSONL file, or a Hugging Face dataset.

Every source becomes `Prompt` records, read one row at a time. Bad input fails with a
`PromptSetError` that names the file, the line (or row) and the field, before any model is
loaded: rows that are not JSON or not UTF-8, missing or empty fields, and duplicate ids (both
lines named).

JSONL rows take one of two shapes:
    {"prompt_id": "q1", "prompt": "Write a haiku about rain."}
    {"prompt_id": "q2", "messages": [{"role": "user", "content": "..."}]}
`prompt_id` (or `id`) is optional (default: `<file stem>-<line>`): a non-empty string, or an integer
kept as its digits (0 is "0"); a boolean or any other type is refused. `messages` must end with a
user turn. Text that cannot be written as UTF-8 (a lone surrogate such as "\ud800" in the JSON) is
refused with its file, line and field, before any model is loaded.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from rlaif.core.errors import ConfigError
from rlaif.core.records import Message, Prompt, content_hash
from rlaif.core.store import Manifest, RunStore
from rlaif.prompts import data_file

PROMPTS = "prompts"  # the run dir's folder of prompt chunks

BUNDLED_SETS = {
    # FastChat's MT-Bench questions (80, two turns each; Apache-2.0). We use the first turn: the
    # second refers to an answer of the model under test, which a preference pair does not have.
    # An evaluation set: hygiene keeps it out of every recipe's data by default (prompts/hygiene.py).
    "mt_bench": "sets/mt_bench.jsonl",
    # 40 short instruction prompts of our own, 5 in each of MT-Bench's 8 categories, in turn (so any
    # limit gets a mix), sharing no 8-gram with MT-Bench: the quickstart's prompts.
    "starter": "sets/starter.jsonl",
}


class PromptSetError(ConfigError):
    """A prompt source that cannot be read, with the place that is wrong."""

    def __init__(self, source: str, row: int | None, field: str | None, problem: str):
        where = source + (f", line {row}" if row is not None else "")
        where += f", field '{field}'" if field else ""
        super().__init__(f"{where}: {problem}")
        self.source, self.row, self.field = source, row, field


def iter_prompts(source: str, limit: int | None = None, split: str = "train") -> Iterator[Prompt]:
    """Prompts from a bundled set name, a .jsonl path, a saved dataset dir, or `hf:<id>`, one at a
    time, each checked; a duplicate id fails naming both lines. Memory: one id per prompt."""
    if source in BUNDLED_SETS:
        rows = _bundled_rows(source)
    elif source.startswith("hf:") or Path(source).is_dir():
        rows = _dataset_rows(source, split)
    elif Path(source).suffix == ".jsonl":
        rows = _jsonl_rows(Path(source))
    else:
        raise PromptSetError(source, None, None, f"unknown prompt source; use one of {sorted(BUNDLED_SETS)}, "
                                                 "a .jsonl file, a saved dataset directory or hf:<dataset id>")
    seen: dict[str, int] = {}
    count = 0
    for n, prompt in rows:
        first = seen.setdefault(prompt.prompt_id, n)
        if first != n:
            raise PromptSetError(source, n, "prompt_id", f"duplicate id {prompt.prompt_id!r} (first on line {first})")
        yield prompt
        count += 1
        if limit and count >= limit:
            return


def load_prompts(source: str, limit: int | None = None, split: str = "train") -> list[Prompt]:
    """All prompts of a source (see `iter_prompts`)."""
    return list(iter_prompts(source, limit, split))


def bundled_questions(name: str) -> list[dict]:
    """A bundled set's rows, in FastChat's question format: question_id, category, turns."""
    return [json.loads(line) for line in data_file(BUNDLED_SETS[name]).read_text().splitlines() if line.strip()]


def mt_bench_questions() -> list[dict]:
    """FastChat's MT-Bench questions as published: question_id, category, turns (and references)."""
    return bundled_questions("mt_bench")


def _bundled_rows(source: str) -> Iterator[tuple[int, Prompt]]:
    for n, row in enumerate(bundled_questions(source), start=1):
        yield n, Prompt(prompt_id=f"{source}-{row['question_id']}",
                        messages=[Message(role="user", content=row["turns"][0])], source=f"{source}:{row['category']}")


def _jsonl_rows(path: Path) -> Iterator[tuple[int, Prompt]]:
    if not path.is_file():
        raise PromptSetError(str(path), None, None, "is a directory, not a .jsonl file" if path.is_dir() else "file not found")
    any_rows = False
    with path.open("rb") as f:
        for n, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise PromptSetError(str(path), n, None, f"not UTF-8 (byte {raw[e.start]:#04x} at column {e.start + 1}); "
                                                         "save the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise PromptSetError(str(path), n, None, f"not valid JSON ({e.msg} at column {e.colno})") from None
            any_rows = True
            yield n, _row_to_prompt(row, str(path), n, default_id=f"{path.stem}-{n}")
    if not any_rows:
        raise PromptSetError(str(path), None, None, "no prompts in file")


def _dataset_rows(source: str, split: str) -> Iterator[tuple[int, Prompt]]:
    import datasets

    if source.startswith("hf:"):
        ds = datasets.load_dataset(source[3:], split=split)
    else:
        try:
            ds = datasets.load_from_disk(source)
        except FileNotFoundError:
            raise PromptSetError(source, None, None, "is a directory but not a saved dataset "
                                                     "(datasets.save_to_disk); give a .jsonl file or a dataset dir") from None
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise PromptSetError(source, None, None, f"no split {split!r} (have: {sorted(ds)})")
            ds = ds[split]
    for i, row in enumerate(ds):
        yield i, _row_to_prompt(row, source, i, default_id=f"row-{i}")


def _prompt_id(row: dict, source: str, n: int, default_id: str) -> str:
    """The row's id as given: a non-empty string or an integer (0 is a valid id); else `default_id`
    when it has none. Never silently replaced: a boolean, a float or an empty string is an error."""
    field = "prompt_id" if row.get("prompt_id") is not None else "id"
    value = row.get(field)
    if value is None:
        return default_id
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise PromptSetError(source, n, field, f"must be a non-empty string or an integer, got {value!r}")
    value = str(value)
    if not value.strip():
        raise PromptSetError(source, n, field, "is empty (leave it out for the default id)")
    return value


def _utf8(source: str, n: int, field: str, text: str) -> None:
    """Text a shard can hold: a lone surrogate (valid JSON escape, not Unicode) cannot be written."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise PromptSetError(source, n, field, f"not valid Unicode: a lone surrogate {text[e.start]!r} at character "
                                               f"{e.start + 1}; fix the text or its escape") from None


def _row_to_prompt(row: Any, source: str, n: int, default_id: str) -> Prompt:
    if not isinstance(row, dict):
        raise PromptSetError(source, n, None, "each row must be a JSON object")
    prompt_id = _prompt_id(row, source, n, default_id)
    _utf8(source, n, "prompt_id", prompt_id)
    if "messages" in row and row["messages"] is not None:
        raw = row["messages"]
        if not isinstance(raw, list) or not raw:
            raise PromptSetError(source, n, "messages", "must be a non-empty list of {role, content}")
        try:
            messages = [Message.model_validate(m) for m in raw]
        except ValidationError as e:
            err = e.errors()[0]
            raise PromptSetError(source, n, "messages", f"{'.'.join(map(str, err['loc']))}: {err['msg']}") from None
        # A trailing assistant turn is the reference answer, not part of the prompt.
        while messages and messages[-1].role == "assistant":
            messages.pop()
        if not messages or messages[-1].role != "user":
            raise PromptSetError(source, n, "messages", "must end with a user turn")
        if not messages[-1].content.strip():
            raise PromptSetError(source, n, "messages", "the last user turn is empty")
        for i, m in enumerate(messages):
            _utf8(source, n, f"messages.{i}.content", m.content)
    elif "prompt" in row:
        text = row["prompt"]
        if not isinstance(text, str):
            raise PromptSetError(source, n, "prompt", f"must be a string, got {type(text).__name__}")
        if not text.strip():
            raise PromptSetError(source, n, "prompt", "is empty")
        _utf8(source, n, "prompt", text)
        messages = [Message(role="user", content=text)]
    else:
        raise PromptSetError(source, n, "prompt", "missing: each row needs 'prompt' (a string) or 'messages'")
    return Prompt(prompt_id=prompt_id, messages=messages, source=source)


def write_prompt_chunks(prompts: Iterable[Prompt], store: RunStore, shard_size: int) -> Manifest:
    """The prompts as chunks of `shard_size`, each a shard keyed by its prompts' ids and hashes:
    the unit every later stage keys on. A chunk already on disk is not written again."""
    shards, chunk = [], []

    def flush() -> None:
        key = content_hash([(p.prompt_id, p.hash) for p in chunk])
        info = store.info(PROMPTS, key, Prompt) or store.write(PROMPTS, key, chunk, group=key)
        shards.append(info.model_copy(update={"group": key}))
        chunk.clear()

    for p in prompts:
        chunk.append(p)
        if len(chunk) == shard_size:
            flush()
    if chunk:
        flush()
    return Manifest(stage=PROMPTS, shards=shards)
