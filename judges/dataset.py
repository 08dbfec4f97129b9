"""The preference dataset on disk, in versions: what TRL, the alignment-handbook and the Hub read as is.

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
full conversations: TRL 1.16's DPOTrainer fails on it. A prompt's pairs all land on one side.

Versions: every publish writes a new folder and leaves the older ones as they are.

    runs/<name>/versions/0003/
        README.md                 the dataset card, with Hugging Face metadata (configs -> Parquet)
        dataset_dict.json, <split>/   `DatasetDict.save_to_disk`: datasets.load_from_disk(dir)
        prefs/{train,test}_prefs-<inputs hash>.parquet   Parquet, as two configs (the card's
        sft/{train,test}_sft-<inputs hash>.parquet       metadata): datasets.load_dataset(dir[, "sft"])
        plots/*.png               score distribution per model, margins, how often each model won
        manifest.json             inputs' hashes, recipe, specs, counts, every dropped id and why
    runs/<name>/dataset -> versions/0003   (a relative symlink to the latest)

A version is written under a temporary name and renamed into place, so a crash leaves no half
version. Publishing inputs identical to the latest version's (same records, same specs) returns
that version instead of writing a copy, unless `force`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from generation.hygiene import HygieneReport, HygieneSpec, clean_prompts
from generation.records import Completion, Judgement, PairJudgement, PreferencePair, Prompt, content_hash
from judges.binarize import BinarizeReport, BinarizeSpec, binarize, select_judgements, split_pairs

PREF_COLUMNS = ("prompt", "chosen", "rejected", "messages", "prompt_id", "score_chosen", "score_rejected",
                "chosen_model", "rejected_model", "judge", "judge_model", "judge_kind", "template_version")
SFT_COLUMNS = ("prompt", "completion", "messages", "prompt_id")
SPLITS = ("train_prefs", "test_prefs", "train_sft", "test_sft")
# The two kinds of split have different columns, so the Parquet side holds them as two configs
# (one config's splits must share a schema): `prefs` (the default) and `sft`.
CONFIGS = {"train_prefs": "prefs", "test_prefs": "prefs", "train_sft": "sft", "test_sft": "sft"}


def _features(columns: tuple[str, ...]):
    from datasets import Features, List, Value

    message = {"role": Value("string"), "content": Value("string")}
    conv = {"prompt", "chosen", "rejected", "messages", "completion"}
    num = {"score_chosen", "score_rejected"}
    return Features({c: List(message) if c in conv else Value("float64" if c in num else "string")
                     for c in columns})


def preference_rows(pairs: list[PreferencePair]) -> list[dict]:
    rows = []
    for p in pairs:
        d = p.model_dump(mode="json")
        d["messages"] = d["prompt"] + d["chosen"]
        rows.append({k: d[k] for k in PREF_COLUMNS})
    return rows


def sft_rows(pairs: list[PreferencePair]) -> list[dict]:
    """One row per prompt: its best-scored chosen answer (all_pairs repeats a prompt's chosen)."""
    best: dict[str, PreferencePair] = {}
    for p in pairs:
        if p.prompt_id not in best or p.score_chosen > best[p.prompt_id].score_chosen:
            best[p.prompt_id] = p
    rows = []
    for p in best.values():
        prompt = [m.model_dump() for m in p.prompt]
        completion = [m.model_dump() for m in p.chosen]
        rows.append({"prompt": prompt, "completion": completion, "messages": prompt + completion,
                     "prompt_id": p.prompt_id})
    return rows


def build_dataset(train: list[PreferencePair], test: list[PreferencePair]):
    """The four splits as a `DatasetDict` (an empty split keeps its schema)."""
    from datasets import Dataset, DatasetDict

    def split(rows: list[dict], columns: tuple[str, ...]) -> Dataset:
        return Dataset.from_dict({k: [r[k] for r in rows] for k in columns}, features=_features(columns))

    return DatasetDict({
        "train_prefs": split(preference_rows(train), PREF_COLUMNS),
        "test_prefs": split(preference_rows(test), PREF_COLUMNS),
        "train_sft": split(sft_rows(train), SFT_COLUMNS),
        "test_sft": split(sft_rows(test), SFT_COLUMNS),
    })


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


def write_preference_dataset(train: list[PreferencePair], test: list[PreferencePair], out: str | Path):
    """The dataset alone, with a metadata-only README (no card, plots or manifest); returns it."""
    dd = build_dataset(train, test)
    tag = content_hash([p.pair_hash for p in train], [p.pair_hash for p in test])
    write_dataset(dd, out, tag)
    (Path(out) / "README.md").write_text("\n".join(["---", *configs_yaml(tag), "---", ""]))
    return dd


# ----------------------------------------------------------------------------- versions

def list_versions(run_dir: str | Path) -> list[Path]:
    root = Path(run_dir) / "versions"
    return sorted(p for p in root.glob("[0-9][0-9][0-9][0-9]") if p.is_dir()) if root.is_dir() else []


def latest_version(run_dir: str | Path) -> Path | None:
    versions = list_versions(run_dir)
    return versions[-1] if versions else None


def _records_hash(records: list, key: str) -> str:
    return content_hash(sorted((getattr(r, key), content_hash(r)) for r in records))


def _redact(obj: Any, secrets: list[str]) -> Any:
    """Drop every known secret's value from what gets written (belt and braces: recipes hold none)."""
    text = json.dumps(obj, default=str)
    for s in secrets:
        text = text.replace(s, "***")
    return json.loads(text)


def _secrets() -> list[str]:
    return [v for k, v in os.environ.items() if v and len(v) >= 8 and k in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")]


def _point_latest(run_dir: Path, version: Path) -> None:
    link = run_dir / "dataset"
    if link.exists() and not link.is_symlink():  # a dataset from before versions: keep it as 0000
        link.rename(run_dir / "versions" / "0000")
    tmp = run_dir / f".dataset-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(version.relative_to(run_dir))
    os.replace(tmp, link)


def publish_version(run_dir: str | Path, recipe_info: dict, prompts: list[Prompt],
                    completions: list[Completion], judgements: list[Judgement] | list[PairJudgement],
                    spec: BinarizeSpec, hygiene: HygieneSpec | None = None,
                    eval_prompts: list[Prompt] | None = None, force: bool = False,
                    push: bool = True) -> Path:
    """Hygiene, binarize, split, and write a new dataset version with its card, plots and manifest.

    Returns the version's folder (runs/<name>/versions/NNNN), which `runs/<name>/dataset` then
    points at. `recipe_info` is the recipe as a dict (for the card: prompt source, generators and
    their sampling). Pushes to `spec.push_to_hub` when set and `push`.
    """
    from judges import card

    run_dir = Path(run_dir)
    hygiene = hygiene or HygieneSpec()
    inputs = {"prompts": _records_hash(prompts, "prompt_id"),
              "completions": _records_hash(completions, "completion_id"),
              "judgements": _records_hash(list(judgements), "judgement_id"),
              "eval_prompts": _records_hash(eval_prompts, "prompt_id") if eval_prompts else None}
    inputs_hash = content_hash(inputs, spec.model_dump(exclude={"push_to_hub"}), hygiene)
    latest = latest_version(run_dir)
    if latest and not force and (latest / "manifest.json").exists():
        if json.loads((latest / "manifest.json").read_text()).get("inputs_hash") == inputs_hash:
            _point_latest(run_dir, latest)
            return latest

    kept, hy = clean_prompts(prompts, hygiene, eval_prompts)
    pairs, report = binarize(kept, completions, judgements, spec)
    train, test = split_pairs(pairs, spec.test_fraction, spec.seed)
    dd = build_dataset(train, test)

    (run_dir / "versions").mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".incoming-", dir=run_dir / "versions"))
    try:
        write_dataset(dd, tmp, inputs_hash)
        manifest = _manifest(recipe_info, inputs, inputs_hash, spec, hygiene, hy, report, prompts,
                             completions, judgements, dd)
        manifest = _redact(manifest, _secrets())
        plots = card.write_plots(tmp / "plots", kept, completions, judgements, spec, pairs)

        def finish(n: int) -> None:
            manifest["version"] = n
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
            card.write_card(tmp, manifest, plots, secrets=_secrets())

        version = _claim_number(run_dir, tmp, finish)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _point_latest(run_dir, version)
    if spec.push_to_hub and push:
        push_to_hub(version, spec.push_to_hub)
    return version


def _claim_number(run_dir: Path, tmp: Path, finish) -> Path:
    """Rename the finished folder to the next free number; a concurrent publish takes the one after."""
    while True:
        latest = latest_version(run_dir)
        n = int(latest.name) + 1 if latest else 1
        finish(n)  # the manifest and card name their number
        target = run_dir / "versions" / f"{n:04d}"
        try:
            tmp.rename(target)  # fails if another publish took the number first (never an empty dir)
            return target
        except OSError:
            if not target.exists():
                raise


def _manifest(recipe_info: dict, inputs: dict, inputs_hash: str, spec: BinarizeSpec, hygiene: HygieneSpec,
              hy: HygieneReport, report: BinarizeReport, prompts: list[Prompt], completions: list[Completion],
              judgements: list, dd) -> dict:
    import datasets
    import trl

    ok = [c for c in completions if c.ok]
    per_model: dict[str, dict[str, int]] = {}
    for c in completions:
        m = per_model.setdefault(c.model, {"ok": 0, "failed": 0})
        m["ok" if c.ok else "failed"] += 1
    judgements = select_judgements(list(judgements), spec)
    status = {s: sum(1 for j in judgements if j.status == s) for s in ("parsed", "unparsed", "failed")}
    j = next((j for j in judgements if j.status == "parsed"), judgements[0] if judgements else None)
    judge = {"name": j.judge, "kind": j.kind, "model": j.judge_model, "template": j.template,
             "template_version": j.template_version, "template_hash": j.template_hash} if j else {}
    return {
        "version": None, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "inputs": inputs, "inputs_hash": inputs_hash,
        "recipe": recipe_info, "judge": judge, "binarize": spec.model_dump(), "hygiene": hygiene.model_dump(),
        "counts": {
            "prompts": len(prompts), "hygiene_removed": hy.counts, "prompts_after_hygiene": hy.kept,
            "completions": {"total": len(completions), "ok": len(ok), "failed": len(completions) - len(ok),
                            "per_model": per_model},
            "judgements": {"total": len(judgements), **status},
            "unusable_judgements": report.unusable_judgements,
            "judgements_for_removed_prompts": report.judgements_for_other_prompts,
            "scored_completions": report.scored_completions,
            "prompts_skipped": report.skipped, "prompts_paired": report.prompts_paired,
            "pairs": report.pairs, "splits": {k: dd[k].num_rows for k in SPLITS},
        },
        "dropped": {"hygiene": hy.removed, "hygiene_matched": hy.matched, "binarize": report.skipped_ids},
        "libraries": {"datasets": datasets.__version__, "trl": trl.__version__},
    }


# ----------------------------------------------------------------------------- the Hub

class HubError(RuntimeError):
    pass


def push_to_hub(version_dir: str | Path, repo_id: str, private: bool = True) -> str:
    """Upload a version (Parquet configs, card, plots, manifest) to a Hub dataset repo in one commit.

    The token is read from HF_TOKEN and goes nowhere else; a failure names the repo, not the token.
    """
    from huggingface_hub import HfApi

    token = os.environ.get("HF_TOKEN")
    if not token:
        raise HubError(f"pushing {version_dir} to {repo_id}: set HF_TOKEN to a Hugging Face write token")
    version_dir = Path(version_dir)
    try:
        api = HfApi(token=token)
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        api.upload_folder(folder_path=str(version_dir), repo_id=repo_id, repo_type="dataset",
                          allow_patterns=["README.md", "manifest.json", "prefs/*", "sft/*", "plots/*"],
                          commit_message=f"rlaif-pipeline dataset version {version_dir.name}")
    except Exception as e:  # the hub's message, never the token
        raise HubError(f"pushing {version_dir} to {repo_id} failed: {str(e).replace(token, '***')}") from None
    return f"https://huggingface.co/datasets/{repo_id}"
