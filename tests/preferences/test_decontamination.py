"""Decontamination against MT-Bench is on wherever a recipe is evaluated on it (every recipe, by
`rlaif evaluate --mt-bench`): a recipe without a hygiene block keeps MT-Bench's questions out of its
data and the card says what went; a recipe that opts out is told so, and so is MT-Bench's evaluate."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.support.faulty import error_lines, recipe, sent, url  # noqa: F401 - url: a fixture
from rlaif.cli.main import main
from rlaif.recipe.spec import RecipeError, load_recipe
from rlaif.prompts.prompt_sets import load_prompts, mt_bench_questions
from rlaif.prompts.hygiene import NOT_DECONTAMINATED, HygieneSpec, clean_prompts

Q81 = mt_bench_questions()[0]["turns"][0]  # "Compose an engaging travel blog post about a recent trip to Hawaii, ..."
Q82 = mt_bench_questions()[1]["turns"][0]
PROMPTS = [Q81, "Say one.", Q82.split(".")[0] + ", please.", "Say two.", "Say three."]


def printed(capsys) -> str:
    """What the command showed, its lines joined as the console wrapped them."""
    captured = capsys.readouterr()
    return " ".join((captured.out + captured.err).split())


def mt_bench_recipe(tmp_path, url, hygiene=None):
    """Two endpoint members and a judge on the local server; two of five prompts are MT-Bench's
    (one verbatim, one its first sentence); no `hygiene:` block unless one is given."""
    path = recipe(tmp_path, url, PROMPTS)
    data = yaml.safe_load(path.read_text())
    del data["hygiene"]
    if hygiene is not None:
        data["hygiene"] = hygiene
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_recipe_without_a_hygiene_block_keeps_mt_bench_out_and_the_card_says_so(url, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", str(mt_bench_recipe(tmp_path, url)), "--out", str(out)]) == 0
    assert not any(q in text for text in sent("gen") for q in (Q81, Q82.split(".")[0]))  # never generated for
    assert len(sent("gen")) == 6  # 3 prompts x 2 members

    stages = {r["stage"]: r for r in json.loads((out / "summary.json").read_text())}
    assert stages["prompts"]["count_in"] == 5 and stages["prompts"]["count_out"] == 3
    assert stages["prompts"]["notes"]["removed"] == {"overlaps eval set": 2}
    manifest = json.loads((out / "dataset" / "manifest.json").read_text())
    assert manifest["hygiene"]["eval_prompts"] == ["mt_bench"]
    assert manifest["dropped"]["hygiene"] == {"overlaps eval set": ["p0", "p2"]}
    assert manifest["dropped"]["hygiene_matched"] == {"p0": "mt_bench-81", "p2": "mt_bench-82"}
    card = (out / "dataset" / "README.md").read_text()
    assert ("**Decontamination**: 2 prompts removed for sharing 8 consecutive words with a prompt of `mt_bench`; "
            "their ids, and the evaluation prompt each matched, are in `manifest.json`") in card
    assert NOT_DECONTAMINATED not in printed(capsys)

    # MT-Bench of this run's models finds the data clean: no note (and no models yet: exit 2)
    assert main(["evaluate", str(out), "--mt-bench"]) == 2
    captured = capsys.readouterr()
    assert "not decontaminated" not in captured.out + captured.err
    assert "no models to evaluate" in error_lines(captured.err)[0]


@pytest.mark.parametrize("opt_out", [[], None])
def test_a_recipe_may_opt_out_and_is_told_so_and_so_is_mt_bench(url, tmp_path, capsys, opt_out):
    out = tmp_path / "run"
    assert main(["run", str(mt_bench_recipe(tmp_path, url, {"eval_prompts": opt_out})), "--out", str(out)]) == 0
    assert NOT_DECONTAMINATED in printed(capsys)
    assert len(sent("gen")) == 10  # every prompt, MT-Bench's included
    card = (out / "dataset" / "README.md").read_text()
    assert "**Decontamination**: none. `hygiene.eval_prompts` was empty" in card

    assert main(["evaluate", str(out), "--mt-bench"]) == 2  # no models: the note comes first
    assert (f"note: the data these models were trained on was not decontaminated against mt_bench: "
            f"{out / 'dataset'} (hygiene.eval_prompts: none)") in printed(capsys)


def test_eval_prompts_takes_one_set_or_a_list(tmp_path):
    extra = tmp_path / "held_out.jsonl"
    extra.write_text(json.dumps({"prompt_id": "h1", "prompt": "Name three rivers that flow through more than one country."})
                     + "\n")
    prompts = load_prompts("starter") + load_prompts(str(extra)) + load_prompts("mt_bench", limit=2)
    assert HygieneSpec(eval_prompts="mt_bench").eval_prompts == ["mt_bench"]
    kept, report = clean_prompts(prompts, HygieneSpec(near_dup_threshold=None, eval_prompts=["mt_bench", str(extra)]))
    assert report.removed == {"overlaps eval set": ["h1", "mt_bench-81", "mt_bench-82"]}
    assert len(kept) == 40  # the bundled starter set shares nothing with MT-Bench: the quickstart keeps all of it


def test_a_recipe_whose_prompts_are_the_eval_set_is_one_line(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"name": "r", "prompts": {"source": "mt_bench"}, "generators": [{"name": "g", "model": "m"}],
                                    "judge": {"name": "j", "model": "m"}}))
    with pytest.raises(RecipeError) as e:
        load_recipe(path)
    assert str(e.value) == (f"{path}: field 'prompts.source': 'mt_bench' is an evaluation set that hygiene.eval_prompts "
                            "keeps out of the data, so every prompt would be removed; use another source (e.g. the "
                            "bundled 'starter' set) or set hygiene.eval_prompts: []")
    assert load_recipe(path, ["hygiene.eval_prompts=[]"]).prompts.source == "mt_bench"  # opted out: allowed
