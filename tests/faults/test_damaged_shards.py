"""What the pipeline survives on disk: a shard that lost lines, an emptied shard, a shard whose
metadata is gone, a version whose manifest.json was deleted.

A shard counts as finished only when its `.meta.json` matches it (rows, size, hash of its bytes).
Anything else is damaged: set aside as `shard-<key>.jsonl.damaged`, said on the console, and made
again; the run ends with every prompt in the dataset. The store cases need no server; the run
cases use the real HTTP server of tests/support/faulty.py and the command line in this process.
"""

from __future__ import annotations

import json

from datasets import load_from_disk

from tests.support.faulty import Faulty, recipe, sent, url  # noqa: F401 - url: a fixture
from rlaif.core.records import Completion, Message, Prompt
from rlaif.core.store import RunStore
from rlaif.cli.main import main


def records(n: int) -> list[Completion]:
    return [Completion(completion_id=str(i), prompt_id=f"p{i}", prompt_hash="h", model="m", settings_hash="s",
                       text=f"answer {i}") for i in range(n)]


# ----------------------------------------------------------------------------- the store alone
def test_a_shard_that_lost_its_last_lines_is_damaged_not_done(tmp_path):
    store = RunStore(tmp_path)
    store.write("completions", "k", records(12), group="g", name="m")
    path = store.path("completions", "k")
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:11]))  # the last line lost
    assert store.info("completions", "k", Completion) is None  # not "already done"
    state = store.state("completions", ["k"], Completion)
    assert state.missing == ["k"] and not state.done
    assert not path.exists() and store.damaged_path("completions", "k").exists()  # kept to look at
    (note,) = store.damaged_notes("completions", ["k"])
    assert "11 rows" in note and "says 12 rows" in note and "made again" in note
    store.write("completions", "k", records(12), group="g", name="m")  # made again: the copy goes
    assert store.info("completions", "k", Completion).rows == 12
    assert not store.damaged_path("completions", "k").exists() and store.damaged_notes("completions", ["k"]) == []


def test_an_emptied_shard_and_a_shard_without_metadata_are_damaged(tmp_path):
    store = RunStore(tmp_path)
    store.write("judgements/uf", "empty", records(8))
    store.path("judgements/uf", "empty").write_bytes(b"")
    store.write("judgements/uf", "bare", records(8))
    (tmp_path / "judgements/uf/shard-bare.meta.json").unlink()
    store.write("judgements/uf", "edited", records(8))
    path = store.path("judgements/uf", "edited")
    path.write_text(path.read_text().replace("answer 3", "answer 9"))  # same rows, same size, other bytes
    state = store.state("judgements/uf", ["empty", "bare", "edited"], Completion)
    assert state.missing == ["empty", "bare", "edited"]
    notes = " ".join(store.damaged_notes("judgements/uf", ["empty", "bare", "edited"]))
    assert "0 rows and 0 bytes" in notes and "no .meta.json" in notes and "do not hash" in notes


def test_a_whole_shard_is_read_once_per_process_and_checked_again_when_it_changes(tmp_path):
    store = RunStore(tmp_path)
    store.write("prompts", "k", [Prompt(prompt_id="a", messages=[Message(role="user", content="hi")])])
    assert store.info("prompts", "k", Prompt).rows == 1
    store.path("prompts", "k").write_text("")  # changed after it was checked
    assert store.info("prompts", "k", Prompt) is None


# ----------------------------------------------------------------------------- a run meets them
def completion_shards(out, model: str):
    return [p for p in out.glob("completions/shard-*.jsonl")
            if json.loads(p.read_text().splitlines()[0])["model"] == model]


def pairs(out) -> int:
    ds = load_from_disk(str(out / "dataset"))
    return ds["train_prefs"].num_rows + ds["test_prefs"].num_rows


def test_a_run_makes_damaged_shards_again_and_publishes_every_prompt(url, tmp_path, capsys):
    path, out = recipe(tmp_path, url, shard_size=4), tmp_path / "run"
    assert main(["run", str(path), "--out", str(out)]) == 0
    assert pairs(out) == 4
    (shard,) = completion_shards(out, "gen-a")
    shard.write_text("".join(shard.read_text().splitlines(keepends=True)[:3]))  # lost its last line
    (judged,) = out.glob("judgements/uf/shard-*.jsonl")
    judged.write_bytes(b"")  # emptied
    capsys.readouterr()

    Faulty.seen = []
    assert main(["run", str(path), "--out", str(out)]) == 0
    err = capsys.readouterr().err.replace("\n", "")
    assert "was damaged (3 rows" in err and "made again" in err  # said on the console
    assert sorted(sent("gen")) == ["Say four.", "Say one.", "Say three.", "Say two."]  # gen-a's shard only
    assert pairs(out) == 4  # every prompt, none silently missing
    assert json.loads((out / "dataset" / "manifest.json").read_text())["counts"]["completions"]["total"] == 8


def test_a_version_whose_manifest_was_deleted_is_published_again(url, tmp_path, capsys):
    path, out = recipe(tmp_path, url), tmp_path / "run"
    assert main(["run", str(path), "--out", str(out)]) == 0
    (out / "versions" / "0001" / "manifest.json").unlink()
    capsys.readouterr()

    Faulty.seen = []
    assert main(["run", str(path), "--out", str(out)]) == 0  # before: exit 3 until the folder was removed by hand
    assert "versions/0001 has no manifest.json" in capsys.readouterr().err.replace("\n", "")
    assert (out / "dataset").resolve() == (out / "versions" / "0002").resolve() and pairs(out) == 4
    assert Faulty.seen == []  # nothing generated or judged again
    assert main(["run", str(path), "--out", str(out)]) == 0  # and the next run finds it done
    assert (out / "dataset").resolve().name == "0002" and not (out / "versions" / "0003").exists()
