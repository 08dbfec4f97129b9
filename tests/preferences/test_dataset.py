"""The published dataset: versions, card and manifest, every loader, and TRL trainers on it as written."""

import json
import re
from pathlib import Path

import pytest
from datasets import load_dataset, load_from_disk

from rlaif.core.records import AspectRating, Completion, Judgement, Message, Prompt
from rlaif.preferences.binarize import BinarizeSpec
from rlaif.preferences.hub import HubError, push_to_hub
from rlaif.prompts.hygiene import HygieneSpec
from rlaif.preferences.rows import PREF_COLUMNS, SFT_COLUMNS
from rlaif.preferences.versions import EmptyDataset, latest_version, list_versions
from tests.support.publishing import publish_records as publish_version

RECIPE = {"name": "unit", "prompts": {"source": "unit.jsonl", "split": "train", "limit": None},
          "generators": [{"name": m, "model": f"org/{m}", "format": "chat",
                          "sampling": {"temperature": 0.7, "top_p": 0.9, "max_tokens": 64, "seed": 0}}
                         for m in ("alpha", "beta", "gamma")]}


def judged(pid: str, model: str, score: float | None, status: str = "parsed", text: str | None = None):
    c = Completion(completion_id=f"{pid}-{model}", prompt_id=pid, prompt_hash="h", model=model, settings_hash="s",
                   text=text or f"{model}'s answer to {pid}.")
    j = Judgement(judgement_id=f"j-{c.completion_id}", completion_id=c.completion_id, prompt_id=pid, model=model,
                  judge="uf", judge_model="judge-135m", template="ultrafeedback_rating", template_version="v1",
                  template_hash="t", settings_hash="s", sampling={}, status=status,
                  aspects={a: AspectRating(rating=None if score is None else round(score), expected=score)
                           for a in ("helpfulness", "honesty")})
    return c, j


def corpus():
    """16 prompts (one an exact duplicate, one left with a single answer, one all-tied), 3 models each."""
    topics = ["rain", "tides", "volcanoes", "bread", "chess", "bees", "comets", "glaciers", "owls", "jazz",
              "maps", "salt", "silk", "kites"]
    prompts = [Prompt(prompt_id=f"q{i}", messages=[Message(role="user", content=f"Explain {t} to a child in "
                                                                                 f"three sentences.")])
               for i, t in enumerate(topics)]
    prompts.append(Prompt(prompt_id="dup", messages=[Message(role="user", content="Explain  RAIN to a child in "
                                                                                   "three sentences.")]))
    prompts.append(Prompt(prompt_id="sys", messages=[Message(role="system", content="Be brief."),
                                                     Message(role="user", content="Name a prime number.")]))
    rows = []
    for k, p in enumerate(prompts):
        for m, base in (("alpha", 4.0), ("beta", 2.5), ("gamma", 3.0)):
            if p.prompt_id == "q3" and m != "alpha":
                continue  # q3: a single answer
            rows.append(judged(p.prompt_id, m, 3.0 if p.prompt_id == "q4" else base + 0.1 * (k % 3)))  # q4: all tie
    return prompts, [c for c, _ in rows], [j for _, j in rows]


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    prompts, completions, judgements = corpus()
    version = publish_version(run, RECIPE, prompts, completions, judgements, BinarizeSpec(test_fraction=0.25),
                              HygieneSpec(near_dup_threshold=None))
    return run, version, (prompts, completions, judgements)


def test_layout_columns_and_split(published):
    run, version, _ = published
    assert version == run / "versions" / "0001" and (run / "dataset").resolve() == version.resolve()
    assert (run / "dataset").is_symlink() and not Path((run / "dataset").readlink()).is_absolute()
    ds = load_from_disk(str(run / "dataset"))
    assert set(ds) == {"train_prefs", "test_prefs", "train_sft", "test_sft"}
    assert tuple(ds["train_prefs"].column_names) == PREF_COLUMNS
    assert tuple(ds["train_sft"].column_names) == SFT_COLUMNS
    # 16 prompts - 1 duplicate - 1 single answer - 1 all-tied = 13 pairs; 0.25 of 13 prompts -> 3 test
    assert (ds["train_prefs"].num_rows, ds["test_prefs"].num_rows) == (10, 3)
    row = ds["train_prefs"][0]
    assert row["prompt"][-1]["role"] == "user" and [m["role"] for m in row["chosen"]] == ["assistant"]
    assert row["messages"] == row["prompt"] + row["chosen"] and row["score_chosen"] > row["score_rejected"]
    assert row["judge"] == "uf" and row["judge_model"] == "judge-135m" and row["template_version"] == "v1"
    sys_row = next(r for s in ("train_prefs", "test_prefs") for r in ds[s] if r["prompt_id"] == "sys")
    assert [m["role"] for m in sys_row["prompt"]] == ["system", "user"]  # the whole conversation so far
    for side in ("train", "test"):
        prefs = set(ds[f"{side}_prefs"]["prompt_id"])
        assert prefs == set(ds[f"{side}_sft"]["prompt_id"])
    assert not set(ds["train_prefs"]["prompt_id"]) & set(ds["test_prefs"]["prompt_id"])
    sft = ds["train_sft"][0]
    assert sft["messages"] == sft["prompt"] + sft["completion"] and sft["completion"][0]["role"] == "assistant"


def test_parquet_and_handbook_loading(published):
    run, version, _ = published
    on_disk = load_from_disk(str(version))
    prefs = load_dataset(str(run / "dataset"))  # the card's configs: `prefs` is the default
    sft = load_dataset(str(run / "dataset"), "sft")
    assert set(prefs) == {"train_prefs", "test_prefs"} and set(sft) == {"train_sft", "test_sft"}
    for split, d in [*prefs.items(), *sft.items()]:
        assert d.to_list() == on_disk[split].to_list() and d.features == on_disk[split].features
    files = {s: str(next((version / "prefs").glob(f"{s}-*.parquet"))) for s in ("train_prefs", "test_prefs")}
    assert load_dataset("parquet", data_files=files)["test_prefs"].to_list() == on_disk["test_prefs"].to_list()
    # the alignment-handbook's loader: load_dataset(id, config, split=...) then select_columns, per
    # entry of a recipe's dataset_mixture; its scripts then take dataset["train_prefs"] etc.
    dpo = load_dataset(str(version), None, split="train_prefs").select_columns(["prompt", "chosen", "rejected"])
    sft_msgs = load_dataset(str(version), "sft", split="test_sft").select_columns(["messages"])
    assert dpo.num_rows == on_disk["train_prefs"].num_rows and sft_msgs[0]["messages"][-1]["role"] == "assistant"


def card_table(card: str, first: str) -> list[str]:
    line = next(x for x in card.splitlines() if x.startswith(f"| {first} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_card_numbers_match_the_dataset(published):
    run, version, (prompts, completions, judgements) = published
    card, manifest = (version / "README.md").read_text(), json.loads((version / "manifest.json").read_text())
    ds = load_from_disk(str(version))
    assert card.startswith("---\nconfigs:\n") and "pretty_name: unit preferences v1" in card
    for split in ds:
        assert int(card_table(card, split)[1]) == ds[split].num_rows == manifest["counts"]["splits"][split]
    c = manifest["counts"]
    assert c["pairs"] == ds["train_prefs"].num_rows + ds["test_prefs"].num_rows
    assert card_table(card, "prompts (hygiene)")[1:] == [str(len(prompts)), str(len(prompts) - 1), "exact duplicate: 1"]
    assert c["prompts_skipped"] == {"one completion": 1, "all completions tie": 1}
    assert manifest["dropped"]["hygiene"] == {"exact duplicate": ["dup"]} and manifest["dropped"]["hygiene_matched"] == {"dup": "q0"}
    assert manifest["dropped"]["binarize"] == {"one completion": ["q3"], "all completions tie": ["q4"]}
    assert card_table(card, "binarize (prompts)")[1:] == ["15", "13", "one completion: 1, all completions tie: 1"]
    kept = [c for c in completions if c.prompt_id != "dup"]  # hygiene ran before generation
    assert card_table(card, "completions")[1:3] == [str(len(kept))] * 2
    assert "`judge-135m`" in card and "version `v1`" in card and "`best_vs_random`" in card
    assert "| alpha | org/alpha | chat | 0.7 | 0.9 | 64 | 0 |" in card
    for png in re.findall(r"\]\((plots/[\w.]+\.png)\)", card):
        assert (version / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(re.findall(r"\]\((plots/[\w.]+\.png)\)", card)) == 5  # three of the data, two of the judge's biases


def test_new_versions_only_when_inputs_change_and_old_ones_stay(tmp_path):
    prompts, completions, judgements = corpus()
    spec, hy = BinarizeSpec(), HygieneSpec(near_dup_threshold=None)
    v1 = publish_version(tmp_path, RECIPE, prompts, completions, judgements, spec, hy)
    assert publish_version(tmp_path, RECIPE, prompts, completions, judgements, spec, hy) == v1  # unchanged
    v2 = publish_version(tmp_path, RECIPE, prompts, completions, judgements, spec.model_copy(update={"seed": 1}), hy)
    v3 = publish_version(tmp_path, RECIPE, prompts, completions, judgements[:-3], spec, hy, force=True)
    assert [v.name for v in list_versions(tmp_path)] == ["0001", "0002", "0003"] and latest_version(tmp_path) == v3
    assert (tmp_path / "dataset").resolve() == v3.resolve() and (v1 / "dataset_dict.json").exists()
    m1, m3 = (json.loads((v / "manifest.json").read_text()) for v in (v1, v3))
    assert m1["inputs"]["judgements"] != m3["inputs"]["judgements"] and m3["version"] == 3
    assert json.loads((v2 / "manifest.json").read_text())["binarize"]["seed"] == 1
    assert not list((tmp_path / "versions").glob(".incoming-*"))
    assert all(oct(v.stat().st_mode & 0o777) == oct(0o777 & ~current_umask()) for v in (v1, v2, v3))


def current_umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_an_empty_dataset_is_never_published(tmp_path):
    prompts, completions, judgements = corpus()
    unparsed = [j.model_copy(update={"status": "unparsed"}) for j in judgements]
    with pytest.raises(EmptyDataset, match="no preference pairs"):
        publish_version(tmp_path, RECIPE, prompts, completions, unparsed, BinarizeSpec(), HygieneSpec(near_dup_threshold=None))
    assert list_versions(tmp_path) == [] and not (tmp_path / "dataset").exists()
    assert not list((tmp_path / "versions").glob(".incoming-*"))


def test_token_never_written_and_push_errors(tmp_path, monkeypatch):
    sentinel = "hf_SENTINELtoken1234567890"
    monkeypatch.setenv("HF_TOKEN", sentinel)
    prompts, completions, judgements = corpus()
    careless = {**RECIPE, "notes": f"pushed with {sentinel}"}  # a token pasted where it must not be
    version = publish_version(tmp_path, careless, prompts, completions, judgements, BinarizeSpec(),
                              HygieneSpec(near_dup_threshold=None))
    for f in version.rglob("*"):
        if f.is_file():
            assert sentinel.encode() not in f.read_bytes(), f

    import huggingface_hub

    calls = []
    monkeypatch.setattr(huggingface_hub.HfApi, "whoami", lambda self, *a, **kw: {"name": "me"})
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda self, *a, **k: calls.append(("create", a, k)))

    def refused(self, **kw):  # the hub's answer we cannot cause here: a 401 that echoes the token
        calls.append(("upload", kw))
        raise RuntimeError(f"401 Unauthorized for token {sentinel}")

    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", refused)
    with pytest.raises(HubError) as e:
        push_to_hub(version, "me/prefs")
    assert "me/prefs" in str(e.value) and sentinel not in str(e.value)
    upload = calls[1][1]
    assert upload["folder_path"] == str(version) and {"README.md", "prefs/*", "sft/*"} <= set(upload["allow_patterns"])
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(HubError, match="HF_TOKEN"):
        push_to_hub(version, "me/prefs")


def test_trl_trainers_run_on_the_dataset_as_written(published, tiny_model_dir, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    run, version, _ = published
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.pad_token = tok.pad_token or tok.eos_token

    def model():
        return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)

    common = dict(max_steps=1, per_device_train_batch_size=2, use_cpu=True, report_to=[], save_strategy="no",
                  max_length=128, logging_steps=1)
    prefs = load_from_disk(str(run / "dataset"))["train_prefs"]  # every column, no mapping
    dpo = DPOTrainer(model=model(), ref_model=model(), processing_class=tok, train_dataset=prefs,
                     args=DPOConfig(output_dir=str(tmp_path / "dpo"), **common))
    assert dpo.train().global_step == 1
    sft_split = load_dataset(str(version), "sft")["train_sft"]  # the Parquet side, no mapping
    sft = SFTTrainer(model=model(), processing_class=tok, train_dataset=sft_split,
                     args=SFTConfig(output_dir=str(tmp_path / "sft"), **common))
    assert sft.train().global_step == 1
    labels = sft.train_dataset[0]["labels"]  # prompt-completion: the loss is on the answer only
    assert labels[0] == -100 and any(t != -100 for t in labels)


def write_recipe(tmp_path: Path) -> Path:
    """A recipe over the corpus's prompts (as a prompt file), its three members and its judge."""
    prompts, _, _ = corpus()
    (tmp_path / "prompts.jsonl").write_text("".join(
        json.dumps({"prompt_id": p.prompt_id, "messages": [m.model_dump() for m in p.messages]}) + "\n"
        for p in prompts))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"""name: unit
prompts: {{source: {tmp_path / 'prompts.jsonl'}}}
hygiene: {{near_dup_threshold: null}}
generators: [{{name: alpha, model: org/alpha}}, {{name: beta, model: org/beta}}, {{name: gamma, model: org/gamma}}]
judges: [{{name: uf, model: judge-135m}}]
binarize: {{test_fraction: 0.25}}
""")
    return recipe


def write_judged_shards(recipe: Path, run: Path) -> None:
    """The corpus's completions and judgements, where `rlaif generate` and `rlaif judge` would put them."""
    from rlaif.core.store import RunStore
    from rlaif.recipe.spec import load_recipe
    from rlaif.generation.stage import GenerateStage
    from rlaif.judges.stage import JudgeStage
    from rlaif.prompts.hygiene import prepare_prompts

    _, completions, judgements = corpus()
    r, store = load_recipe(recipe), RunStore(run)
    pm, _ = prepare_prompts(r.prompts.source, "train", None, r.hygiene, store, r.shard_size)
    generation = GenerateStage(pm, r.generators)
    for job in generation.plan(store):
        for s in job.shards:
            store.write(s.stage, s.key, [c for c in completions if c.model == s.name and c.prompt_id != "dup"],
                        group=job.group, name=s.name)
    cm = generation.manifest(generation.plan(store))
    for job in JudgeStage(cm, r.judges[0]).plan(store):
        (s,) = job.shards
        store.write(s.stage, s.key, [j for j in judgements if j.prompt_id != "dup"], group=job.group, name="uf")


def test_rlaif_binarize_publishes_from_the_run_dir(tmp_path, capsys):
    """`rlaif binarize` runs the binarize flow on shards where the stages would have put them."""
    from rlaif.cli.main import main

    recipe, run = write_recipe(tmp_path), tmp_path / "run"
    assert main(["binarize", str(recipe), "--out", str(run)]) == 2
    assert "no completions yet from ['alpha', 'beta', 'gamma']" in capsys.readouterr().err
    write_judged_shards(recipe, run)
    assert main(["binarize", str(recipe), "--out", str(run)]) == 0
    assert "13 pairs from 13 of 15 prompts" in capsys.readouterr().err
    assert main(["binarize", str(recipe), "--out", str(run), "--set", "binarize.strategy=best_vs_worst"]) == 0
    assert [v.name for v in list_versions(run)] == ["0001", "0002"]
    assert json.loads((run / "dataset" / "manifest.json").read_text())["binarize"]["strategy"] == "best_vs_worst"
    assert main(["binarize", str(recipe), "--out", str(run), "--set", "binarize.strategy=best_vs_worst"]) == 0
    assert [v.name for v in list_versions(run)] == ["0001", "0002"]  # unchanged inputs: the latest version back
    assert main(["binarize", str(recipe), "--out", str(run), "--set", "hygiene.ngram=0"]) == 2
    assert "field 'hygiene.ngram'" in capsys.readouterr().err


def test_rlaif_binarize_push_to_hub(tmp_path, monkeypatch, capsys):
    """`rlaif binarize --push-to-hub REPO` uploads the new version in one commit with the token from
    HF_TOKEN, and pushes an unchanged version again when asked. The hub is the one thing faked (there
    is none here): HfApi's token check (whoami, which the preflight calls) answers, and its two upload
    calls record what they were given; the second time the hub answers a
    401 that quotes the token. The token lands in no file and on no console line."""
    import secrets

    import huggingface_hub

    from rlaif.cli.main import main

    token = "hf_" + secrets.token_hex(16)
    monkeypatch.setenv("HF_TOKEN", token)
    calls = []
    monkeypatch.setattr(huggingface_hub.HfApi, "whoami", lambda self, *a, **kw: {"name": "me"})
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo",
                        lambda self, repo_id, **kw: calls.append(("create", repo_id, kw, self.token)))
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", lambda self, **kw: calls.append(("upload", kw, self.token)))
    recipe, run = write_recipe(tmp_path), tmp_path / "run"
    write_judged_shards(recipe, run)
    assert main(["binarize", str(recipe), "--out", str(run), "--push-to-hub", "me/prefs"]) == 0
    version = (run / "dataset").resolve()
    (_, repo, created, t1), (_, upload, t2) = calls
    assert repo == "me/prefs" and created["repo_type"] == "dataset" and t1 == t2 == token
    assert upload["repo_id"] == "me/prefs" and upload["folder_path"] == str(version)
    assert {"README.md", "manifest.json", "prefs/*", "sft/*"} <= set(upload["allow_patterns"])
    assert "pushed to me/prefs" in capsys.readouterr().err

    def refused(self, **kw):
        calls.append(("upload", kw, self.token))
        raise RuntimeError(f"401 Client Error: Unauthorized for token {self.token}")

    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", refused)
    assert main(["binarize", str(recipe), "--out", str(run), "--push-to-hub", "me/prefs"]) != 0
    assert len(calls) == 4 and calls[-1][1]["folder_path"] == str(version)  # the same version, pushed again
    err = capsys.readouterr().err
    assert "me/prefs" in err and "failed" in err and token not in err
    assert list_versions(run) == [version]
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and token.encode() in p.read_bytes()]
