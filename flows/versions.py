"""Stand-in for the versioned dataset writer (`judges.dataset.publish_version`, issue 6).

Same signature and layout, minimal content: binarize, split, and write `versions/<NNNN>/` (the
DatasetDict, a short README.md card, manifest.json) whole or not at all, then point
`<run dir>/dataset` at it. Inputs already published as the latest version publish nothing new.
The lead replaces the import of this module with the real writer at merge.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from generation.records import Completion, Judgement, Prompt, content_hash
from judges.binarize import BinarizeSpec, binarize, split_pairs
from judges.dataset import write_preference_dataset


def latest_version(run_dir: str | Path) -> Path | None:
    found = sorted((Path(run_dir) / "versions").glob("[0-9]" * 4))
    return found[-1] if found else None


def publish_version(run_dir: str | Path, recipe_info: dict, prompts: list[Prompt], completions: list[Completion],
                    judgements: list[Judgement], spec: BinarizeSpec) -> Path:
    run_dir = Path(run_dir)
    inputs_hash = content_hash([(p.prompt_id, p.hash) for p in prompts], [c.completion_id for c in completions],
                               judgements, spec)
    latest = latest_version(run_dir)
    (run_dir / "versions").mkdir(parents=True, exist_ok=True)
    if latest and json.loads((latest / "manifest.json").read_text())["inputs_hash"] == inputs_hash:
        _point_latest(run_dir, latest)
        return latest
    pairs, report = binarize(prompts, completions, judgements, spec)
    train, test = split_pairs(pairs, spec.test_fraction, spec.seed)
    tmp = Path(tempfile.mkdtemp(prefix=".incoming-", dir=run_dir / "versions"))
    n = int(latest.name) + 1 if latest else 1
    write_preference_dataset(train, test, tmp)
    manifest = {"version": n, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "inputs_hash": inputs_hash, "recipe": recipe_info, "judge": {"name": spec.judge},
                "binarize": spec.model_dump(),
                "counts": {"prompts": len(prompts), "pairs": report.pairs, "prompts_skipped": report.skipped,
                           "unusable_judgements": report.unusable_judgements,
                           "splits": {"train_prefs": len(train), "test_prefs": len(test)}}}
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    (tmp / "README.md").write_text(f"# {recipe_info.get('name')} — version {n:04d}\n\n{len(train)} train / "
                                   f"{len(test)} test preference pairs, judged by {spec.judge}.\n")
    target = run_dir / "versions" / f"{n:04d}"
    try:
        tmp.rename(target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _point_latest(run_dir, target)
    return target


def _point_latest(run_dir: Path, version: Path) -> None:
    link = run_dir / "dataset"
    if link.exists() and not link.is_symlink():  # a dataset from before versions: kept as 0000
        link.rename(run_dir / "versions" / "0000")
    tmp = run_dir / f".dataset-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(version.relative_to(run_dir))
    os.replace(tmp, link)
