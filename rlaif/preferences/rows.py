"""Dataset rows in the form TRL, the alignment-handbook and the Hub read as is.

Splits (the alignment-handbook's names, as in HuggingFaceH4/ultrafeedback_binarized):
    train_prefs, test_prefs   prompt, chosen, rejected, messages, prompt_id, score_chosen,
                              score_rejected, chosen_model, rejected_model, judge, judge_model,
                              judge_kind, template_version
    train_sft, test_sft       prompt, completion, messages, prompt_id  (each prompt's best answer, for dSFT)
`prompt` is the conversation up to the last user turn (a list of {role, content}); `chosen`,
`rejected` and `completion` are the answer turn as a one-message list; `messages` is the chosen
conversation whole. That is TRL's conversational form with an explicit prompt: DPOTrainer reads
the prefs splits, SFTTrainer the sft splits (prompt-completion, loss on the answer), the handbook
selects `messages` or `chosen`/`rejected`. We do not keep the Hub dataset's string `prompt` beside
full conversations: TRL 1.16's DPOTrainer fails on it.

Splits are built by `datasets` from row iterators (Arrow on disk, written in batches), so memory
does not grow with the dataset.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from rlaif.core.records import PreferencePair

PREF_COLUMNS = ("prompt", "chosen", "rejected", "messages", "prompt_id", "score_chosen", "score_rejected",
                "chosen_model", "rejected_model", "judge", "judge_model", "judge_kind", "template_version")
SFT_COLUMNS = ("prompt", "completion", "messages", "prompt_id")
SPLITS = ("train_prefs", "test_prefs", "train_sft", "test_sft")
# The two kinds of split have different columns, so the Parquet side holds them as two configs
# (one config's splits must share a schema): `prefs` (the default) and `sft`.
CONFIGS = {"train_prefs": "prefs", "test_prefs": "prefs", "train_sft": "sft", "test_sft": "sft"}


def features(columns: tuple[str, ...]):
    from datasets import Features, List, Value

    message = {"role": Value("string"), "content": Value("string")}
    conv = {"prompt", "chosen", "rejected", "messages", "completion"}
    num = {"score_chosen", "score_rejected"}
    return Features({c: List(message) if c in conv else Value("float64" if c in num else "string") for c in columns})


def preference_row(p: PreferencePair) -> dict:
    d = p.model_dump(mode="json")
    d["messages"] = d["prompt"] + d["chosen"]
    return {k: d[k] for k in PREF_COLUMNS}


def sft_row(p: PreferencePair) -> dict:
    prompt = [m.model_dump() for m in p.prompt]
    completion = [m.model_dump() for m in p.chosen]
    return {"prompt": prompt, "completion": completion, "messages": prompt + completion, "prompt_id": p.prompt_id}


def best_per_prompt(pairs: Iterable[PreferencePair]) -> list[PreferencePair]:
    """One pair per prompt: its best-scored chosen answer (all_pairs repeats a prompt's chosen)."""
    best: dict[str, PreferencePair] = {}
    for p in pairs:
        if p.prompt_id not in best or p.score_chosen > best[p.prompt_id].score_chosen:
            best[p.prompt_id] = p
    return list(best.values())


def build_dataset(rows: Callable[[str], Iterable[dict]], work_dir: str | Path):
    """The four splits as a `DatasetDict`; `rows(split)` yields a split's rows. Each split is written
    row by row to an Arrow file under `work_dir` and memory-mapped, so memory stays a batch of rows.
    An empty split keeps its schema."""
    from datasets import Dataset, DatasetDict
    from datasets.arrow_writer import ArrowWriter

    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    out = {}
    for name in SPLITS:
        columns = PREF_COLUMNS if CONFIGS[name] == "prefs" else SFT_COLUMNS
        path = work_dir / f"{name}.arrow"
        with ArrowWriter(features=features(columns), path=str(path)) as writer:
            for row in rows(name):
                writer.write(row)
            writer.finalize()
        out[name] = Dataset.from_file(str(path))
    return DatasetDict(out)


def parquet_path(split: str, tag: str) -> str:
    """Where a split's Parquet file lives in a version folder (and in the Hub repo).

    `tag` (the version's inputs hash) is in the name because `datasets.load_dataset(<folder>)`
    caches a folder with a README `configs:` block by that block alone: two versions with the same
    file names would read each other's cache.
    """
    return f"{CONFIGS[split]}/{split}-{tag}.parquet"


def configs_yaml(tag: str) -> list[str]:
    """The README metadata lines that map each config's splits to their Parquet files."""
    lines = ["configs:"]
    for config in ("prefs", "sft"):
        lines += [f"- config_name: {config}"] + (["  default: true"] if config == "prefs" else [])
        lines += ["  data_files:"]
        for split in (s for s in SPLITS if CONFIGS[s] == config):
            lines += [f"  - split: {split}", f"    path: {parquet_path(split, tag)}"]
    return lines


def write_dataset(dd, out: str | Path, tag: str) -> None:
    """save_to_disk into `out`, and each split as Parquet under `out/prefs` or `out/sft`."""
    out = Path(out)
    dd.save_to_disk(str(out), num_shards={k: 1 for k in dd})  # an empty split still writes its file
    for name, split in dd.items():
        (out / parquet_path(name, tag)).parent.mkdir(exist_ok=True)
        split.to_parquet(str(out / parquet_path(name, tag)))
