"""The dataset card (README.md with Hugging Face metadata), from a version's manifest.

Every number on the card is read from the manifest that `preferences.versions.publish` writes
beside it, and the manifest's counts are taken from the written splits, so card and data agree.
The metadata's `configs:` block maps each split to its Parquet file: config `prefs` (the default)
holds train_prefs/test_prefs, config `sft` train_sft/test_sft (a config's splits share one schema).
That is how the Hub and `datasets.load_dataset(<folder>[, "sft"])` find the splits.
"""

from __future__ import annotations

from pathlib import Path

from rlaif.core.store import write_atomic
from rlaif.preferences.bias import BiasReport, bias_rows
from rlaif.prompts.hygiene import EVAL, eval_sets
from rlaif.preferences.rows import configs_yaml

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


def _decontamination(h: dict, c: dict) -> str:
    """What was kept out of the data for an evaluation's sake, or that nothing was."""
    sets = eval_sets(h)
    if not sets:
        return ("**Decontamination**: none. `hygiene.eval_prompts` was empty, so these prompts were not checked "
                "against any evaluation set: a benchmark (MT-Bench included) may hold some of them.")
    n = c["hygiene_removed"].get(EVAL, 0)
    return (f"**Decontamination**: {n} prompt{'' if n == 1 else 's'} removed for sharing {h['ngram']} consecutive "
            f"words with a prompt of {', '.join(f'`{s}`' for s in sets)}; their ids, and the evaluation prompt each "
            f"matched, are in `manifest.json` (`dropped.hygiene[\"{EVAL}\"]`, `dropped.hygiene_matched`).")


def _policy(gens: list[dict], policy: list[str] | None) -> list[str]:
    """An on-policy round's data: which policy made it (flows/rounds.py)."""
    members = [g for g in gens if g.get("name") in (policy or ())]
    if not members:
        return []
    models = sorted({(g.get("model"), g.get("revision")) for g in members}, key=str)
    said = ", ".join(f"`{m}`" + (f" (trained from inputs `{r}`)" if r else "") for m, r in models)
    others = [g.get("name") for g in gens if g.get("name") not in policy]
    names = ", ".join(f"`{g.get('name')}`" for g in members)
    return [f"**Policy**: an on-policy round. Members {names} "
            f"are the policy {said}, the last round's dDPO model, one answer each per prompt with its own seed"
            + (f"; beside it: {', '.join(f'`{n}`' for n in others)}" if others else "") + ".", ""]


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
            f"threshold {h['near_dup_threshold']} (all-MiniLM-L6-v2 cosine).", "",
            _decontamination(h, c), "", "**Models and sampling**:", ""]
    out += _table(["name", "model", "format", "temperature", "top_p", "max_tokens", "seed"],
                  [[g.get("name"), g.get("model"), g.get("format"), *(g.get("sampling", {}).get(k) for k in
                    ("temperature", "top_p", "max_tokens", "seed"))] for g in gens])
    out += _policy(gens, b.get("policy"))
    out += [f"**Judge**: `{judge.get('name', '?')}`, kind `{judge.get('kind', '?')}`, model "
            f"`{judge.get('model', '?')}`, template `{judge.get('template', '?')}` version "
            f"`{judge.get('template_version', '?')}`. Score: {b['aspect'] or 'mean of aspects'}, "
            f"source `{b['score']}`.", "",
            *_served_lines(judge.get("served")),
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
            "are in `manifest.json` (`dropped`).", ""]
    out += _bias_section(m.get("judge_bias"))
    out += _drift_section(m.get("sentinels"), judge.get("name", "?"))
    out += _humans_section(m.get("humans"))
    out += ["## Plots", ""]
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


def _bias_section(report: dict | None) -> list[str]:
    """The judge's biases, measured on this version's judgements and pairs (preferences/bias.py)."""
    if not report:
        return []
    r = BiasReport.model_validate(report)
    out = ["## The judge's biases", "",
           f"Measured on judge `{r.judge}` (`{r.judge_model}`, kind `{r.kind}`) over this version's scored "
           f"completions and pairs, score {r.aspect or 'mean of aspects'} ({r.score}). LLM judges tend to favour "
           "longer answers, the answer shown first and their own model's answers: a length rho well above 0, "
           "chosen answers mostly longer, or a positive own-minus-others score is a bias the pairs inherit "
           "(`binarize.length_penalty` controls for length). Spearman rho is None with too little data.", ""]
    out += _table(["measure", "value"], [list(row) for row in bias_rows(r)])
    return out


def _humans_section(h: dict | None) -> list[str]:
    """Each judge against each labeler's labels in the run (`rlaif label`), and labelers against each other."""
    if not h:
        return []
    names = sorted(h["labels"])
    fmt = lambda x: "n/a" if x is None else f"{x:.2f}"  # noqa: E731
    out = ["## Human labels", "",
           f"{sum(h['labels'].values())} labels by {len(names)} labeler(s) in `labels/` (`rlaif label`). "
           "Agreement: the share of a labeler's pairs where the judge prefers the same answer (a tie counts only "
           "as a tie); n: the pairs the judge scored both answers of.", ""]
    if names:
        cell = lambda r: f"{fmt(r['agreement'])} (n={r['pairs']})"  # noqa: E731
        out += _table(["judge", *names], [[f"`{j}`", *(cell(row[n]) for n in names)] for j, row in h["judges"].items()])
    if h["between_labelers"]:
        out += _table(["labelers", "pairs both labelled", "same winner", "Cohen's kappa"],
                      [[" / ".join(b["labelers"]), b["pairs"], fmt(b["same_winner"]), fmt(b["cohen_kappa"])]
                       for b in h["between_labelers"]])
    unread = h.get("unreadable", {})
    out += [f"Not read: `{f}`: {why}" for f, why in unread.items()] + ([""] if unread else [])
    return out


def write_card(version_dir: Path, manifest: dict, plots: dict[str, str], secrets: list[str] = ()) -> Path:
    text = card_text(manifest, plots)
    for s in secrets:
        text = text.replace(s, "***")
    return write_atomic(Path(version_dir) / "README.md", text)


def _served_lines(served: dict | None) -> list[str]:
    """What answered the judge's requests, as the answers said (judges/identity.py)."""
    if not served:
        return []
    return ["**Judged by** (what answered, as the responses name it; verdicts each): "
            + "; ".join(f"`{who}` ({n})" for who, n in served.items()) + ".", ""]


def _drift_section(checks: list[dict] | None, judge: str) -> list[str]:
    """The judge's sentinel checks up to this version (judges/sentinels.py)."""
    if not checks:
        return []
    out = ["## Judge drift", "",
           f"Every run that judged something new judged the same {checks[-1]['prompts']} sentinel prompts "
           f"({checks[-1]['completions']} completions) again with `{judge}`; each check is compared with the first "
           "of the judge's settings: the share of sentinel preferences that flipped, the mean score shift, "
           "Spearman of the scores and Cohen's kappa of the preferences. The drift plot is under Plots.", ""]
    fmt = lambda x, f: "" if x is None else format(x, f)  # noqa: E731
    rows = []
    for c in checks:
        d = c.get("drift") or {}
        rows.append([c["number"], f"{c['version']:04d}" if c.get("version") else "", c["created"],
                     "; ".join(c["served"]), fmt(d.get("flip_rate"), ".1%"), fmt(d.get("score_shift"), "+.3f"),
                     fmt(d.get("spearman"), ".3f"), fmt(d.get("kappa"), ".3f")])
    return out + _table(["check", "version", "when", "served as", "flipped", "score shift", "spearman", "kappa"], rows)
