"""The preference dataset on disk: a `DatasetDict` with `train_prefs` and `test_prefs`.

Rows are in TRL's conversational form with an explicit prompt: `prompt` is the list of messages
before the answer, `chosen` and `rejected` are the answer turn as a one-message list. TRL's
`DPOTrainer` reads this with no mapping. (The Hub's ultrafeedback_binarized keeps a string
`prompt` beside full conversations, which TRL 1.16's DPOTrainer does not load as is.)
"""

from __future__ import annotations

from pathlib import Path

from generation.records import PreferencePair

PREF_COLUMNS = ("prompt", "chosen", "rejected", "prompt_id", "score_chosen", "score_rejected",
                "chosen_model", "rejected_model", "judge")


def _features():
    from datasets import Features, List, Value

    message = {"role": Value("string"), "content": Value("string")}
    return Features({
        "prompt": List(message), "chosen": List(message), "rejected": List(message),
        "prompt_id": Value("string"), "score_chosen": Value("float64"),
        "score_rejected": Value("float64"), "chosen_model": Value("string"),
        "rejected_model": Value("string"), "judge": Value("string"),
    })


def to_rows(pairs: list[PreferencePair]) -> list[dict]:
    return [{k: v for k, v in p.model_dump(mode="json").items() if k in PREF_COLUMNS} for p in pairs]


def write_preference_dataset(train: list[PreferencePair], test: list[PreferencePair], out: str | Path):
    """Save `train_prefs` / `test_prefs` with `save_to_disk`; returns the DatasetDict."""
    from datasets import Dataset, DatasetDict

    features = _features()

    def split(pairs: list[PreferencePair]) -> Dataset:
        rows = to_rows(pairs)  # by columns: an empty split keeps its schema
        return Dataset.from_dict({k: [r[k] for r in rows] for k in features}, features=features)

    dd = DatasetDict({"train_prefs": split(train), "test_prefs": split(test)})
    dd.save_to_disk(str(out), num_shards={k: 1 for k in dd})  # an empty split still writes its file
    return dd
