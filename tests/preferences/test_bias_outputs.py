"""The judge's biases where users read them: the dataset card (measured chunk by chunk while
publishing, equal to the measures over the whole run, self-preference by the recipe's model ids)
and `rlaif agreement`."""

from __future__ import annotations

import json

import pytest
from datasets import load_from_disk

from rlaif.preferences.bias import judge_bias, same_model
from rlaif.preferences.binarize import BinarizeSpec
from rlaif.prompts.hygiene import HygieneSpec
from tests.support.publishing import publish_records
from tests.preferences.test_dataset import RECIPE, corpus, judged


def longer_gamma():
    """The test corpus with gamma's answers longer, so the lengths vary."""
    prompts, completions, judgements = corpus()
    rows = [judged(c.prompt_id, c.model, j.aspects["honesty"].expected,
                   text=c.text + (" and more words" * 3 if c.model == "gamma" else ""))
            for c, j in zip(completions, judgements)]
    return prompts, [c for c, _ in rows], [j for _, j in rows]


def test_card_shows_length_bias_and_self_preference_measured_chunk_by_chunk(tmp_path):
    prompts, completions, judgements = longer_gamma()
    # gamma runs on the judge's own model (another spelling of its id)
    recipe = {**RECIPE, "generators": [{**g, "model": "Org/Judge-135M"} if g["name"] == "gamma" else g
                                       for g in RECIPE["generators"]]}
    version = publish_records(tmp_path, recipe, prompts, completions, judgements, BinarizeSpec(test_fraction=0.25),
                              HygieneSpec(near_dup_threshold=None), shard_size=4)  # 4 chunks
    manifest = json.loads((version / "manifest.json").read_text())
    card = (version / "README.md").read_text()

    members = {g["name"]: g["model"] for g in recipe["generators"]}
    kept = {p.prompt_id for p in prompts} - {"dup"}
    whole = judge_bias([j for j in judgements if j.prompt_id in kept], [c for c in completions if c.prompt_id in kept],
                       members=members)
    got = manifest["judge_bias"]
    assert got["self_preference"] == whole.self_preference.model_dump()
    assert got["self_preference"]["own_members"] == ["gamma"] and same_model("Org/Judge-135M", "judge-135m")
    # gamma's mean is 3.0 + its share of 0.1 * (k % 3), the others' alpha 4.x and beta 2.5x
    assert got["self_preference"]["difference"] == pytest.approx(whole.self_preference.difference)
    for k in ("completions", "spearman_words", "spearman_chars", "spearman_words_per_model"):
        assert got["length"][k] == pytest.approx(whole.length.model_dump()[k])
    assert got["spread"]["mean"]["counts"] == whole.spread["mean"].counts

    ds = load_from_disk(str(version))
    diffs = [len(r["chosen"][0]["content"].split()) - len(r["rejected"][0]["content"].split())
             for s in ("train_prefs", "test_prefs") for r in ds[s]]
    assert got["length"]["pairs"] == len(diffs)
    assert got["length"]["chosen_minus_rejected_words"] == pytest.approx(sum(diffs) / len(diffs))

    section = card[card.index("## The judge's biases"):card.index("## Plots")]
    assert f"| length: Spearman rho, score vs words | {got['length']['spearman_words']:.2f} (n=43) |" in section
    assert "| self-preference: members on the judge's model | gamma |" in section
    assert f"| self-preference: own minus others | {got['self_preference']['difference']:+.2f} |" in section
    for png in ("plots/judge_length.png", "plots/judge_self_preference.png"):
        assert f"]({png})" in card and (version / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_agreement_reports_each_judges_biases(tmp_path, capsys, monkeypatch):
    """A run directory as the stages leave it (prompt chunks, completion shards, two judges' shards
    and reports, recipe.json): `rlaif agreement` adds each judge's biases, read chunk by chunk."""
    from rlaif.core.records import content_hash
    from rlaif.core.store import Manifest, RunStore
    from rlaif.cli.main import main
    from rlaif.prompts.prompt_sets import write_prompt_chunks
    from rlaif.judges.stage import judge_dir

    prompts, completions, judgements = longer_gamma()
    store = RunStore(tmp_path)
    chunks = write_prompt_chunks(prompts, store, 5)
    chunk_of = {p.prompt_id: s.key for s in chunks.shards for p in store.read("prompts", s.key, type(prompts[0]))}
    recipe = {**RECIPE, "generators": [{**g, "model": "judge-135m"} if g["name"] == "alpha" else g
                                       for g in RECIPE["generators"]], "binarize": {"test_fraction": 0.25}}
    (tmp_path / "recipe.json").write_text(json.dumps(recipe))
    for name, shift in (("uf", 0.0), ("other", 1.0)):
        m = Manifest(stage=judge_dir(name))
        for s in chunks.shards:
            mine = [j.model_copy(update={"judge": name, "aspects": {a: r.model_copy(update={"expected": r.expected + shift})
                                                                    for a, r in j.aspects.items()}})
                    for j in judgements if chunk_of[j.prompt_id] == s.key]
            m.shards.append(store.write(m.stage, content_hash(name, s.key), mine, group=s.key, name=name))
        store.write_json(f"{m.stage}/report.json", {"judge": name, "kind": "ultrafeedback", "manifest": m.model_dump()})
    for s in chunks.shards:
        mine = [c for c in completions if chunk_of[c.prompt_id] == s.key]
        store.write("completions", content_hash("c", s.key), mine, group=s.key)

    monkeypatch.setenv("COLUMNS", "160")
    assert main(["agreement", str(tmp_path), "--judges", "uf", "other"]) == 0
    report = json.loads((tmp_path / "agreement" / "uf__other.json").read_text())
    whole = judge_bias(judgements, completions, members={g["name"]: g["model"] for g in recipe["generators"]})
    uf = report["bias"]["uf"]
    assert uf["self_preference"] == whole.self_preference.model_dump() and uf["self_preference"]["own_members"] == ["alpha"]
    assert uf["length"]["spearman_words"] == pytest.approx(whole.length.spearman_words) is not None
    assert uf["length"]["pairs"] == 14  # 16 prompts; one has a single answer, one all tie
    assert report["bias"]["other"]["self_preference"]["difference"] == pytest.approx(whole.self_preference.difference)
    captured = capsys.readouterr()
    out = captured.out + captured.err
    assert "each judge's biases" in out and "self-preference: own minus others" in out
