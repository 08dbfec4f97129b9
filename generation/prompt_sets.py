"""Prompt sets: the bundled MT-Bench questions, any JSONL file, or a Hugging Face dataset.

Every source becomes a list of `Prompt` records. Bad input fails with a `PromptSetError` that
names the file, the line (or row) and the field, before any model is loaded.

JSONL rows take one of two shapes:
    {"prompt_id": "q1", "prompt": "Write a haiku about rain."}
    {"prompt_id": "q2", "messages": [{"role": "user", "content": "..."}]}
`prompt_id` is optional (default: `<file stem>-<line>`); `messages` must end with a user turn.
"""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from generation.records import Message, Prompt

BUNDLED_SETS = {
    # FastChat's MT-Bench questions (80, two turns each; Apache-2.0). We use the first turn: the
    # second refers to an answer of the model under test, which a preference pair does not have.
    "mt_bench": "sets/mt_bench.jsonl",
}


class PromptSetError(ValueError):
    """A prompt source that cannot be read, with the place that is wrong."""

    def __init__(self, source: str, row: int | None, field: str | None, problem: str):
        where = source + (f", line {row}" if row is not None else "")
        where += f", field '{field}'" if field else ""
        super().__init__(f"{where}: {problem}")
        self.source, self.row, self.field = source, row, field


def load_prompts(source: str, limit: int | None = None, split: str = "train") -> list[Prompt]:
    """Load prompts from a bundled set name, a .jsonl path, a saved dataset dir, or `hf:<id>`."""
    if source in BUNDLED_SETS:
        prompts = _load_mt_bench(files("prompts").joinpath(BUNDLED_SETS[source]), source)
    elif source.startswith("hf:"):
        prompts = _load_dataset_rows(source, split)
    elif Path(source).is_dir():
        prompts = _load_dataset_rows(source, split)
    elif Path(source).suffix == ".jsonl":
        prompts = _load_jsonl(Path(source))
    else:
        raise PromptSetError(
            source, None, None,
            f"unknown prompt source; use one of {sorted(BUNDLED_SETS)}, a .jsonl file, "
            "a saved dataset directory or hf:<dataset id>",
        )
    ids = [p.prompt_id for p in prompts]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise PromptSetError(source, None, "prompt_id", f"duplicate ids: {dupes[:5]}")
    return prompts[:limit] if limit else prompts


def _load_mt_bench(path: Any, source: str) -> list[Prompt]:
    prompts = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        row = json.loads(line)
        prompts.append(
            Prompt(
                prompt_id=f"{source}-{row['question_id']}",
                messages=[Message(role="user", content=row["turns"][0])],
                source=f"{source}:{row['category']}",
            )
        )
    return prompts


def _load_jsonl(path: Path) -> list[Prompt]:
    if not path.exists():
        raise PromptSetError(str(path), None, None, "file not found")
    prompts = []
    with path.open() as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise PromptSetError(str(path), n, None, f"not valid JSON ({e.msg} at column {e.colno})") from None
            prompts.append(_row_to_prompt(row, str(path), n, default_id=f"{path.stem}-{n}"))
    if not prompts:
        raise PromptSetError(str(path), None, None, "no prompts in file")
    return prompts


def _load_dataset_rows(source: str, split: str) -> list[Prompt]:
    import datasets

    if source.startswith("hf:"):
        ds = datasets.load_dataset(source[3:], split=split)
    else:
        ds = datasets.load_from_disk(source)
        if isinstance(ds, datasets.DatasetDict):
            ds = ds[split]
    return [_row_to_prompt(row, source, i, default_id=f"row-{i}") for i, row in enumerate(ds)]


def _row_to_prompt(row: Any, source: str, n: int, default_id: str) -> Prompt:
    if not isinstance(row, dict):
        raise PromptSetError(source, n, None, "each row must be a JSON object")
    prompt_id = str(row.get("prompt_id") or row.get("id") or default_id)
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
    elif "prompt" in row:
        text = row["prompt"]
        if not isinstance(text, str):
            raise PromptSetError(source, n, "prompt", f"must be a string, got {type(text).__name__}")
        if not text.strip():
            raise PromptSetError(source, n, "prompt", "is empty")
        messages = [Message(role="user", content=text)]
    else:
        raise PromptSetError(source, n, "prompt", "missing: each row needs 'prompt' (a string) or 'messages'")
    return Prompt(prompt_id=prompt_id, messages=messages, source=source)
