"""The dataset card (README.md with Hugging Face metadata) and its plots, from a version's manifest.

Every number on the card is read from the manifest that `judges.dataset.publish_version` writes
beside it, and the manifest's counts are taken from the written splits, so card and data agree.
The metadata's `configs:` block maps each split to its Parquet file: config `prefs` (the default)
holds train_prefs/test_prefs, config `sft` train_sft/test_sft (a config's splits share one schema).
That is how the Hub and `datasets.load_dataset(<folder>[, "sft"])` find the splits.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

from generation.records import Completion, PreferencePair, Prompt
from judges.binarize import BinarizeSpec, select_judgements
from judges.dataset import configs_yaml
from judges.scores import completion_scores

# ----------------------------------------------------------------------------- plots

def _figure():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt, *plt.subplots(figsize=(6.4, 3.6), dpi=100)


def _save(plt, fig, ax, path: Path, empty: bool) -> None:
    if empty:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_plots(out: Path, prompts: list[Prompt], completions: list[Completion], judgements: list,
                spec: BinarizeSpec, pairs: list[PreferencePair]) -> dict[str, str]:
    """Three PNGs under `out`; returns {title: path relative to the version folder}."""
    out.mkdir(parents=True, exist_ok=True)
    wanted = {p.prompt_id for p in prompts}
    model_of = {c.completion_id: c.model for c in completions if c.ok and c.prompt_id in wanted}
    judged = [j for j in select_judgements(list(judgements), spec) if j.prompt_id in wanted]
    per_model: dict[str, list[float]] = defaultdict(list)
    for cid, s in completion_scores(judged, spec.score, spec.aspect).items():
        if cid in model_of:
            per_model[model_of[cid]].append(s)
    made = {}

    plt, fig, ax = _figure()
    values = [s for v in per_model.values() for s in v]
    if values:
        lo, hi = min(values), max(values)
        bins = [lo + (hi - lo) * i / 20 for i in range(21)] if hi - lo > 1e-6 else 1
        for model, scores in sorted(per_model.items()):
            ax.hist(scores, bins=bins, histtype="step", linewidth=1.5, label=f"{model} (n={len(scores)})")
        ax.legend(fontsize=8)
    ax.set(title="Score distribution per model", xlabel=f"score ({spec.aspect or 'mean of aspects'}, "
                                                         f"{spec.score})", ylabel="completions")
    _save(plt, fig, ax, out / "scores_per_model.png", not values)
    made["Score distribution per model"] = "plots/scores_per_model.png"

    plt, fig, ax = _figure()
    margins = [p.score_chosen - p.score_rejected for p in pairs]
    if margins:
        ax.hist(margins, bins=20 if max(margins) - min(margins) > 1e-6 else 1, color="tab:blue")
    ax.set(title="Chosen minus rejected score", xlabel="margin", ylabel="pairs")
    _save(plt, fig, ax, out / "margins.png", not margins)
    made["Chosen minus rejected margin"] = "plots/margins.png"

    plt, fig, ax = _figure()
    chosen, seen = Counter(p.chosen_model for p in pairs), Counter()
    for p in pairs:
        seen[p.chosen_model] += 1
        seen[p.rejected_model] += 1
    models = sorted(seen)
    if models:
        rates = [chosen[m] / seen[m] for m in models]
        bars = ax.bar(models, rates, color="tab:green")
        for b, m in zip(bars, models):
            ax.annotate(f"{chosen[m]}/{seen[m]}", (b.get_x() + b.get_width() / 2, b.get_height()),
                        ha="center", va="bottom", fontsize=8)
        ax.set_ylim(0, 1.1)
    ax.set(title="How often each model's completion was chosen", ylabel="chosen / pairs it is in")
    _save(plt, fig, ax, out / "chosen_rate.png", not models)
    made["How often each model was chosen"] = "plots/chosen_rate.png"
    return made


# ----------------------------------------------------------------------------- the card

def _size(n: int) -> str:
    return "n<1K" if n < 1000 else "1K<n<10K" if n < 10_000 else "10K<n<100K" if n < 100_000 else "100K<n<1M"


def _metadata(m: dict) -> str:
    lines = ["---", *configs_yaml(m["inputs_hash"])]
    lines += ["license: other", "language:", "- en", "task_categories:", "- text-generation",
              "tags:", "- dpo", "- rlaif", "- preference", "- synthetic", "- trl",
              "size_categories:", f"- {_size(m['counts']['pairs'])}",
              f"pretty_name: {m['recipe'].get('name', 'rlaif')} preferences v{m['version']}", "---", ""]
    return "\n".join(lines)


def _table(header: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return out + ["| " + " | ".join(str(x) for x in r) + " |" for r in rows] + [""]


def _reasons(d: dict) -> str:
    return ", ".join(f"{k}: {v}" for k, v in d.items()) or "none"


def card_text(m: dict, plots: dict[str, str]) -> str:
    r, c, b, h = m["recipe"], m["counts"], m["binarize"], m["hygiene"]
    gens = r.get("generators", [])
    judge = m.get("judge") or {}  # from the judgement records themselves, not the recipe
    src = r.get("prompts", {})
    name = r.get("name", "rlaif")
    out = [_metadata(m), f"# {name}: preference pairs, version {m['version']}", "",
           f"Chosen/rejected pairs made by rlaif-pipeline on {m['created']}: "
           f"prompts from `{src.get('source', '?')}`, answered by {len(gens)} open model(s), rated by the "
           f"LLM judge `{judge.get('name', '?')}`, binarized with `{b['strategy']}`.", "",
           "## Splits", ""]
    out += _table(["split", "rows", "what"], [
        ["train_prefs", c["splits"]["train_prefs"], "preference pairs for DPO"],
        ["test_prefs", c["splits"]["test_prefs"], "held-out pairs (whole prompts)"],
        ["train_sft", c["splits"]["train_sft"], "each train prompt's best answer, for dSFT"],
        ["test_sft", c["splits"]["test_sft"], "each test prompt's best answer"]])
    out += ["Preference splits: `prompt` (the conversation up to the last user turn, a list of "
            "`{role, content}`), `chosen` and `rejected` (the answer turn, one message), `messages` "
            "(the chosen conversation whole), `prompt_id`, `score_chosen`, `score_rejected`, and "
            "provenance: `chosen_model`, `rejected_model`, `judge`, `judge_model`, `judge_kind`, "
            "`template_version`. SFT splits: `prompt`, `completion`, `messages`, `prompt_id`. All "
            "completions of a prompt are on the same side of the train/test split.", "",
            "## How it was made", "", f"**Prompts**: `{src.get('source', '?')}` (split `{src.get('split', '')}`, "
            f"limit {src.get('limit')}). Hygiene: exact dedup {h['exact_dedup']}, near-duplicate "
            f"threshold {h['near_dup_threshold']} (all-MiniLM-L6-v2 cosine), eval set "
            f"`{h['eval_prompts']}` ({h['ngram']}-gram overlap).", "", "**Models and sampling**:", ""]
    out += _table(["name", "model", "format", "temperature", "top_p", "max_tokens", "seed"],
                  [[g.get("name"), g.get("model"), g.get("format"), *(g.get("sampling", {}).get(k) for k in
                    ("temperature", "top_p", "max_tokens", "seed"))] for g in gens])
    out += [f"**Judge**: `{judge.get('name', '?')}`, kind `{judge.get('kind', '?')}`, model "
            f"`{judge.get('model', '?')}`, template `{judge.get('template', '?')}` version "
            f"`{judge.get('template_version', '?')}`. Score: {b['aspect'] or 'mean of aspects'}, "
            f"source `{b['score']}`.", "",
            f"**Binarization**: strategy `{b['strategy']}`, min_margin {b['min_margin']}, ties "
            f"`{b['ties']}`, test_fraction {b['test_fraction']}, seed {b['seed']}.", "",
            "## Counts at every stage", ""]
    per_model = ", ".join(f"{k}: {v['ok']} ok / {v['failed']} failed" for k, v in c["completions"]["per_model"].items())
    out += _table(["stage", "in", "out", "dropped, and why"], [
        ["prompts (hygiene)", c["prompts"], c["prompts_after_hygiene"], _reasons(c["hygiene_removed"])],
        ["completions", c["completions"]["total"], c["completions"]["ok"], f"failed: {c['completions']['failed']} ({per_model})"],
        ["judgements", c["judgements"]["total"], c["scored_completions"],
         _reasons(c["unusable_judgements"]) + f"; for removed prompts: {c['judgements_for_removed_prompts']}"],
        ["binarize (prompts)", c["prompts_after_hygiene"], c["prompts_paired"], _reasons(c["prompts_skipped"])],
        ["pairs", c["prompts_paired"], c["pairs"], ""]])
    out += ["The ids of every prompt left out, and what each duplicate or contaminated prompt matched, "
            "are in `manifest.json` (`dropped`).", "", "## Plots", ""]
    out += [f"![{title}]({path})\n" for title, path in plots.items()]
    out += ["## Loading", "", "```python", "from datasets import load_dataset, load_from_disk",
            'ds = load_from_disk("<this folder>")  # all four splits',
            'prefs = load_dataset("<this folder or hub id>")  # train_prefs, test_prefs',
            'sft = load_dataset("<this folder or hub id>", "sft")  # train_sft, test_sft',
            "# TRL: DPOTrainer(..., train_dataset=ds['train_prefs']); SFTTrainer(..., train_dataset=ds['train_sft'])",
            "# alignment-handbook dataset_mixture: id <this folder or hub id>; DPO: splits train_prefs /",
            "#   test_prefs, columns [prompt, chosen, rejected]; SFT: config sft, splits train_sft / test_sft,",
            "#   columns [messages]", "```", "",
            "## Provenance", "", f"Inputs (content hashes): `{m['inputs']}`; inputs hash `{m['inputs_hash']}`; "
            f"libraries {m['libraries']}. The full recipe is in `manifest.json`.", ""]
    return "\n".join(out)


def write_card(version_dir: Path, manifest: dict, plots: dict[str, str], secrets: list[str] = ()) -> Path:
    text = card_text(manifest, plots)
    for s in secrets:
        text = text.replace(s, "***")
    path = Path(version_dir) / "README.md"
    path.write_text(text)
    return path
