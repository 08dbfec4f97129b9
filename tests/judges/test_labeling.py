"""The human gold set without a browser: which pairs `rlaif label` chooses (stratified by margin,
where two judges disagree, the sentinel set), its one-line errors, the label file (one holder, a
repeated answer written once), the page's server refusing other hosts and origins, the markdown it
renders, two labelers' agreement, and the `humans` section of a published version's manifest and card."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections import Counter

import pytest

from rlaif.cli.main import main as cli
from rlaif.core.records import Completion, Prompt
from rlaif.judges.agreement import HumanLabel, labeler_agreement, load_human_labels
from rlaif.judges.label_page import render, serve
from rlaif.judges.labeling import BINS, Choice, LabelFile, Session, choose_items
from rlaif.core.errors import RlaifError
from tests.support.labeling import build_run, preference


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return build_run(tmp_path_factory.mktemp("run"))


def test_a_sample_takes_each_margin_quartile_in_turn_over_distinct_prompts(built):
    store, prompts, _ = built
    items = choose_items(store, Choice("sample", 12, "uf"))
    assert items == choose_items(store, Choice("sample", 12, "uf"))  # the seed decides
    assert [i.item_id for i in items] != [i.item_id for i in choose_items(store, Choice("sample", 12, "uf", seed=1))]
    all_items = choose_items(store, Choice("sample", 1000, "uf"))
    assert len(all_items) == len(prompts) * 3  # every pair of 3 answers, once
    ranked = sorted(i.margin for i in all_items)
    edges = [ranked[k * len(ranked) // BINS] for k in range(1, BINS)]
    quartile = lambda m: sum(m >= e for e in edges)  # noqa: E731
    first = items[:BINS]
    assert sorted(quartile(i.margin) for i in first) == list(range(BINS))  # close and clear calls both
    assert len({i.prompt.prompt_id for i in items[:len(prompts)]}) == len(prompts)  # spread over prompts


def test_disagree_puts_the_pairs_the_judges_see_oppositely_first(built):
    store, _, completions = built
    items = choose_items(store, Choice("disagree", 4, judges=("uf", "crit")))
    assert len(items) == 4
    for i in items:  # crit reverses alpha and beta on odd prompts
        a, b = i.a.completion_id, i.b.completion_id
        assert {i.a.model, i.b.model} == {"alpha", "beta"} and int(i.prompt.prompt_id[1:]) % 2
        assert preference("uf", completions, a, b) != preference("crit", completions, a, b)


def test_sentinel_items_come_from_the_sentinel_set(built, tmp_path):
    store, prompts, completions = built
    with pytest.raises(RlaifError, match=r"sentinels/set\.json: no sentinel set in this run"):
        choose_items(store, Choice("sentinels", 5))
    (store.root / "sentinels").mkdir()
    (store.root / "sentinels" / "set.json").write_text(json.dumps({"seed": 0, "prompts": [{"prompt_id": "x"}],
                                                                   "completions": []}))
    with pytest.raises(RlaifError, match=r"set\.json.*prompts.*messages") as e:
        choose_items(store, Choice("sentinels", 5))
    assert len(str(e.value).splitlines()) == 1
    (store.root / "sentinels" / "set.json").write_text(json.dumps({
        "seed": 0, "prompts": [p.model_dump(mode="json") for p in prompts[:2]],
        "completions": [c.model_dump(mode="json") for c in completions if c.prompt_id in ("q0", "q1")]}))
    try:
        items = choose_items(store, Choice("sentinels", 100, "uf"))
        assert len(items) == 6 and {i.prompt.prompt_id for i in items} == {"q0", "q1"}
        assert all(i.margin is not None for i in items)  # the judge's margins where it scored them
    finally:
        (store.root / "sentinels" / "set.json").unlink()
        (store.root / "sentinels").rmdir()


@pytest.mark.parametrize("args, message", [
    (["{missing}"], "{missing}: no such run directory"),
    (["{run}", "--judge", "nope"], "no judgements by 'nope' (judges in this run: ['crit', 'uf'])"),
    (["{run}", "--labeler", "../x"], "--labeler '../x': a plain name"),
    (["{run}", "--items", "disagree"], "--items disagree: name two judges of the run, --judges A B"),
    (["{run}", "--items", "sentinels"], "sentinels/set.json: no sentinel set in this run"),
    (["{run}", "--n", "0"], "--n 0: at least 1 pair"),
])
def test_bad_input_is_one_line(built, tmp_path, capsys, args, message):
    store = built[0]
    fill = {"run": str(store.root), "missing": str(tmp_path / "nowhere")}
    labeler = [] if "--labeler" in args else ["--labeler", "ann"]
    assert cli(["label", *(a.format(**fill) for a in args), *labeler]) == 2
    err = capsys.readouterr().err
    assert message.format(**fill) in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_several_judges_and_no_recipe_ask_for_one(built, tmp_path, capsys):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(built[0].root, run)
    (run / "recipe.json").unlink()
    assert cli(["label", str(run), "--labeler", "ann"]) == 2
    assert "several judges (crit, uf); pass --judge NAME" in capsys.readouterr().err


def test_one_page_per_labeler_and_a_repeated_answer_is_written_once(built, tmp_path):
    store = built[0]
    file = LabelFile(tmp_path, "ann")
    with file.hold():
        with pytest.raises(RlaifError, match=r"ann is labeling this run already \(pid \d+\)"):
            with LabelFile(tmp_path, "ann").hold():
                pass
        with LabelFile(tmp_path, "bob").hold():  # another labeler: fine
            pass
    session = Session(choose_items(store, Choice("sample", 3, "uf")), file)
    server = serve(session)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        item = session.current()

        def post(body: dict, headers: dict | None = None) -> tuple[int, dict]:
            req = urllib.request.Request(server.url + "api/label", json.dumps(body).encode(), method="POST",
                                         headers={"Content-Type": "application/json", **(headers or {})})
            try:
                with urllib.request.urlopen(req, timeout=30) as r:
                    return r.status, json.loads(r.read())
            except urllib.error.HTTPError as e:
                return e.code, json.loads(e.read())

        assert post({"item_id": item.item_id, "choice": "left"}, {"Origin": "http://evil.example"})[0] == 403
        assert post({"item_id": item.item_id, "choice": "up"})[0] == 400
        assert post({"item_id": item.item_id, "choice": "left"}, {"Host": "evil.example"})[0] == 421
        assert file.read() == []
        for _ in range(2):  # a double click: the second answer is to an item already labelled
            status, shown = post({"item_id": item.item_id, "choice": "left"})
            assert status == 200 and shown["progress"]["labeled"] == 1 and shown["item_id"] != item.item_id
        (label,) = file.read()
        left = label.completion_a if label.shown_first == "a" else label.completion_b
        assert label.winner_id() == left and label.labeler == "ann"
        with urllib.request.urlopen(server.url, timeout=30) as r:
            csp = r.headers["Content-Security-Policy"]
            assert "script-src 'nonce-" in csp and "default-src 'none'" in csp and b"<script nonce=" in r.read()
    finally:
        server.shutdown()
        server.server_close()


def test_markdown_is_rendered_and_html_escaped():
    html = render("**bold**\n\n```python\nx = '<b>'\n```\n\n<img src=x onerror=alert(1)> ![p](http://a/b.png)")
    assert "<strong>bold</strong>" in html and '<pre><code class="language-python">x = \'&lt;b&gt;\'' in html
    assert "<img" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html


def label(pid: str, a: str, b: str, winner: str, labeler: str) -> HumanLabel:
    return HumanLabel(prompt_id=pid, completion_a=a, completion_b=b, winner=winner, labeler=labeler)


def test_two_labelers_agree_on_the_pairs_both_labelled_either_way_round():
    ann = [label("p", "x1", "y1", "a", "ann"), label("p", "x2", "y2", "b", "ann"), label("p", "x3", "y3", "a", "ann"),
           label("p", "x4", "y4", "b", "ann"), label("p", "x5", "y5", "tie", "ann")]  # x5: ann only
    bob = [label("p", "x1", "y1", "a", "bob"), label("p", "y2", "x2", "a", "bob"),  # the same choice, written reversed
           label("p", "x3", "y3", "b", "bob"), label("p", "x4", "y4", "a", "bob")]
    r = labeler_agreement(ann, bob, ("ann", "bob"))
    assert (r.pairs, r.same_winner, r.cohen_kappa) == (4, 0.5, 0.0)
    assert labeler_agreement(ann, ann, ("ann", "ann")).cohen_kappa == 1.0


def test_a_published_version_reports_each_judge_against_each_labeler(built, tmp_path):
    import shutil

    from rlaif.preferences.binarize import BinarizeSpec
    from rlaif.prompts.hygiene import HygieneSpec
    from tests.support.labeling import judged, scores
    from tests.support.publishing import publish_records

    _, prompts, completions = built
    run = tmp_path / "run"
    shutil.copytree(built[0].root, run)
    items = choose_items(built[0], Choice("sample", 8, "uf"))
    for name, winners in (("ann", "abtaabba"), ("bob", "abtab")):  # bob labels the first 5 of the same pairs
        f = LabelFile(run, name)
        for i, w in zip(items, winners):
            f.append(label(i.prompt.prompt_id, i.a.completion_id, i.b.completion_id, {"t": "tie"}.get(w, w), name))
    (run / "labels" / "broken.jsonl").write_text("{not json\n")
    uf = [judged("uf", c, scores("uf", int(c.prompt_id[1:]), c.model)) for c in completions]
    version = publish_records(run, {"name": "label-test"}, prompts, completions, uf,
                              BinarizeSpec(judge="uf", test_fraction=0.25), HygieneSpec(near_dup_threshold=None))
    humans = json.loads((version / "manifest.json").read_text())["humans"]
    assert humans["labels"] == {"ann": 8, "bob": 5} and list(humans["unreadable"]) == ["broken.jsonl"]
    for judge in ("uf", "crit"):
        for name, ls in (("ann", load_human_labels(run / "labels" / "ann.jsonl")),
                         ("bob", load_human_labels(run / "labels" / "bob.jsonl"))):
            hits = Counter(preference(judge, completions, h.completion_a, h.completion_b) == h.winner for h in ls)
            assert humans["judges"][judge][name] == {"pairs": len(ls), "agreement": pytest.approx(hits[True] / len(ls))}
    (between,) = humans["between_labelers"]
    assert between["labelers"] == ["ann", "bob"] and between["pairs"] == 5 and between["same_winner"] == 0.8
    card = (version / "README.md").read_text()
    section = card[card.index("## Human labels"):card.index("## Plots")]
    ann_uf = humans["judges"]["uf"]["ann"]["agreement"]
    assert "13 labels by 2 labeler(s)" in section and "| judge | ann | bob |" in section
    assert f"| `uf` | {ann_uf:.2f} (n=8) |" in section and "| ann / bob | 5 | 0.80 |" in section
    assert "Not read: `broken.jsonl`" in section
