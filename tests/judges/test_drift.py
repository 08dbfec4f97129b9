"""A judge that changes behind its model name is caught: the served identity is recorded, the
sentinels are judged again by every run with new verdicts, and a run whose sentinel preferences
flipped past `max_drift` publishes nothing and exits 5. Members and judge are the strict local
OpenAI server over real HTTP (`rlaif/rehearsal/openai_server/`), each command a real child process;
no model is loaded. The scheduled-refresh version of the series, through a real Prefect server,
is in tests/flows/test_deploy.py.
"""

from __future__ import annotations

import json

import yaml

from rlaif.rehearsal import fault_cases as cases

SNAPSHOT = "gpt-4o-2099-01-01"


def biased(body: dict) -> str:
    """The judge after its snapshot changed: it now prefers the member it liked least."""
    text = body["messages"][-1]["content"]
    if "response_format" in body:
        return '{"rating": %d, "rationale": "fine"}' % (2 if f"from {cases.GENERATORS[0]}" in text else 4)
    return f"{text} from {body['model']}"


def prompts_file(tmp, n: int) -> None:
    texts = ["Say one.", "Say two.", "Say three.", "Say four.", "Say five.", "Say six."][:n]
    (tmp / "prompts.jsonl").write_text("".join(json.dumps({"prompt_id": f"p{i}", "prompt": t}) + "\n"
                                               for i, t in enumerate(texts)))


def judge_requests(srv) -> int:
    return sum(1 for r in srv.requests if r["path"].endswith("/chat/completions") and "response_format" in r["body"])


def test_a_judge_whose_snapshot_changes_is_caught_on_the_sentinels_and_publishes_nothing(tmp_path, prefect_harness):
    env = cases.env(tmp_path)
    with cases.server() as srv:
        recipe = cases.write_recipe(tmp_path, srv, judge__sentinels=2)
        out = tmp_path / "run"
        run = lambda: cases.rlaif(["run", str(recipe), "--out", str(out)], env)  # noqa: E731

        dry = cases.rlaif(["run", str(recipe), "--dry-run"], env)
        assert dry.returncode == 0, dry.stderr[-3000:]
        assert "sentinels (each run)" in dry.stdout + dry.stderr + dry.stderr

        prompts_file(tmp_path, 4)
        first = run()
        assert first.returncode == 0, first.stderr[-3000:]
        sentinel_set = json.loads((out / "sentinels" / "set.json").read_text())
        assert len(sentinel_set["prompts"]) == 2 and len(sentinel_set["completions"]) == 4

        prompts_file(tmp_path, 5)  # a refresh with one new prompt: its verdicts are new, so a new check
        second = run()
        assert second.returncode == 0, second.stderr[-3000:]

        srv.snapshots, srv.fingerprint, srv.responder = {cases.JUDGE: SNAPSHOT}, "fp_new", biased
        prompts_file(tmp_path, 6)
        third = run()
        asked = judge_requests(srv)
        again = run()  # the same run again: the check is found, nothing is judged, still no version
        assert judge_requests(srv) == asked

    assert third.returncode == 5, third.stderr[-3000:]
    assert "Traceback" not in third.stderr
    (line,) = [x for x in third.stderr.splitlines() if x.startswith("error:")]
    assert "2 of 2 sentinel preferences flipped (100%) since check 1" in line and "max_drift of 10%" in line
    assert f"served as {SNAPSHOT} (fp_new)" in line and "nothing published" in line
    assert f"answered as {SNAPSHOT} (fp_new)" in " ".join((third.stdout + third.stderr).split())  # the console note
    assert again.returncode == 5, again.stderr[-3000:]

    versions = sorted(p.name for p in (out / "versions").iterdir())
    assert versions == ["0001", "0002"] and (out / "dataset").resolve() == out / "versions" / "0002"
    history = json.loads((out / "sentinels" / "uf" / "history.json").read_text())
    assert [c["number"] for c in history] == [1, 2, 3]
    assert [c["version"] for c in history] == [1, 2, None]
    assert history[0]["drift"] is None and history[1]["drift"]["flipped"] == 0
    assert history[2]["drift"]["flip_rate"] == 1.0 and history[2]["drift"]["score_shift"] < 0
    assert list(history[1]["served"]) == [f"{cases.JUDGE} (fp_test)"]
    assert list(history[2]["served"]) == [f"{SNAPSHOT} (fp_new)"]
    assert history[2]["requests"] == 4  # 2 prompts x 2 completions, per completion: the cost of a check

    # every verdict says what answered; the card of version 2 shows it and the drift so far
    report = json.loads((out / "judgements" / "uf" / "report.json").read_text())
    assert report["served"] == {f"{cases.JUDGE} (fp_test)": 10, f"{SNAPSHOT} (fp_new)": 2}
    card = (out / "versions" / "0002" / "README.md").read_text()
    assert f"**Judged by** (what answered, as the responses name it; verdicts each): `{cases.JUDGE} (fp_test)` (10)" in card
    assert "## Judge drift" in card and "![Judge drift on the sentinels](plots/drift.png)" in card
    assert (out / "versions" / "0002" / "plots" / "drift.png").stat().st_size > 0
    manifest = json.loads((out / "versions" / "0002" / "manifest.json").read_text())
    assert [c["number"] for c in manifest["sentinels"]] == [1, 2]


def test_a_judge_swap_reports_flips_shift_and_identities_on_all_completions_and_the_sentinels(tmp_path,
                                                                                             prefect_harness):
    env = cases.env(tmp_path)
    with cases.server(snapshots={"gpt-4.1-nano": "gpt-4.1-nano-2025-04-14"}) as srv:
        recipe = cases.write_recipe(tmp_path, srv)
        out = tmp_path / "run"
        prompts_file(tmp_path, 4)
        first = cases.rlaif(["run", str(recipe), "--out", str(out)], env)
        assert first.returncode == 0, first.stderr[-3000:]
        judge = yaml.safe_load(recipe.read_text())["judge"]
        other = tmp_path / "other.yaml"
        other.write_text(yaml.safe_dump({"judge": {**judge, "name": "uf-41", "model": "gpt-4.1-nano", "sentinels": 2}}))
        srv.responder = biased  # the other judge prefers the other member
        swapped = cases.rlaif(["run", str(recipe), "--out", str(out), "--judge", str(other)], env)
    assert swapped.returncode == 0, swapped.stderr[-3000:]
    report = json.loads((out / "judge-swap" / "uf-41" / "agreement.json").read_text())
    assert report["preference_pairs"] == 4 and report["flipped_pairs"] == 4 and report["flip_rate"] == 1.0
    assert report["score_shift"] < 0  # the first member's answers fell from 5 to 2, the other's rose 3 -> 4
    assert report["served"] == {"uf": {f"{cases.JUDGE} (fp_test)": 8}, "uf-41": {"gpt-4.1-nano-2025-04-14 (fp_test)": 8}}
    assert report["sentinels"]["pairs"] == 2 and report["sentinels"]["flipped"] == 2
    text = " ".join((swapped.stdout + swapped.stderr).split())
    assert "flipped=4/4" in text and "on the sentinels: flipped=2/2" in text
    assert "uf-41 answered as: gpt-4.1-nano-2025-04-14 (fp_test) (8)" in text
