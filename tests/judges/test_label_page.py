"""`rlaif label` in a real headless Chromium (Debian's `chromium`, driven by playwright): a person's
keys on the page become labels in `labels/<labeler>.jsonl` at once, each naming the answer that was
on the side pressed; a restart shows only the pairs not labelled; `rlaif agreement --human` counts
exactly those labels. The run is written by hand (tests/support/labeling.py): no model loads.

With LABEL_PAGE_SCREENSHOT=<path> the first page is also saved there (docs/img/label-page.png is made so).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.helpers import ROOT, stop_group
from tests.support.labeling import build_run, preference

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH: Debian's `chromium` package "
                                                         "(`make install` installs it where apt-get works)")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the dev extra)")
URL = re.compile(r"labeling page: (http://127\.0\.0\.1:\d+/)")


class Page:
    """One `rlaif label` process and a browser tab on its page."""

    def __init__(self, browser, run: Path, out: Path, *args: str):
        self.out = out
        with out.open("w") as f:
            self.proc = subprocess.Popen([sys.executable, "-m", "rlaif", "label", str(run), "--n", "12", *args],
                                         cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 120
        while not (m := URL.search(out.read_text())):
            assert self.proc.poll() is None and time.monotonic() < deadline, out.read_text()
            time.sleep(0.1)
        self.url = m.group(1)
        self.tab = browser.new_page(viewport={"width": 1280, "height": 640})
        self.tab.goto(self.url)
        self.tab.wait_for_function("() => document.body.dataset.item !== undefined")

    def shown(self) -> dict:
        t = self.tab
        return {"item": t.evaluate("document.body.dataset.item"), "count": t.inner_text("#count"),
                "left": t.get_attribute("#left", "data-completion"), "right": t.get_attribute("#right", "data-completion")}

    def press(self, key: str) -> dict:
        before = self.shown()["item"]
        self.tab.keyboard.press(key)
        self.tab.wait_for_function(f"() => document.body.dataset.item !== {json.dumps(before)}")
        return self.shown()

    def stop(self) -> str:
        self.tab.close()
        stop_group(self.proc)
        return self.out.read_text()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--no-proxy-server"])
        yield b
        b.close()


def labels(run: Path, labeler: str) -> list[dict]:
    path = run / "labels" / f"{labeler}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_label_ten_pairs_in_the_browser_resume_and_agreement_counts_them(browser, tmp_path):
    store, _, completions = build_run(tmp_path / "run")
    run = store.root
    page = Page(browser, run, tmp_path / "first.log", "--labeler", "ann")

    # what the page shows: the prompt and two answers, markdown and code rendered, raw HTML as text
    t = page.tab
    assert t.inner_text("#count") == "0 of 12 labeled"
    assert t.locator("#left pre code.language-python").count() == 1 and t.locator("#left ol li").count() == 3
    assert t.locator("#left strong").count() == 1 and t.locator("#right pre code").count() == 1
    assert t.locator(".answer script").count() == 0 and "<script>" in t.inner_text("#left")
    assert t.title() == "rlaif label: run"  # the model's `document.title=` never ran
    assert "How do I" in t.inner_text("#prompt")
    png = t.screenshot(full_page=False)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("LABEL_PAGE_SCREENSHOT"):
        Path(os.environ["LABEL_PAGE_SCREENSHOT"]).write_bytes(png)

    keys = "abtsabatbab"  # 10 labels and one skip
    seen, pressed = [], {}
    state = page.shown()
    for n, key in enumerate(keys, 1):
        seen.append(state)
        pressed[state["item"]] = (key, state["left"], state["right"])
        state = page.press(key)
        done = sum(k != "s" for k in keys[:n])
        assert state["count"] == f"{done} of 12 labeled" + (", 1 skipped" if n >= 4 else "")
        assert len(labels(run, "ann")) == done  # written as it was made, not at the end
    assert len({s["item"] for s in seen}) == 11
    out = page.stop()
    assert "10 of 12 pairs labeled by ann" in out, out

    rows = labels(run, "ann")
    assert len(rows) == 10 and {r["labeler"] for r in rows} == {"ann"} and {r["items"] for r in rows} == {"sample"}
    by_pair = {frozenset((r["completion_a"], r["completion_b"])): r for r in rows}
    skipped = []
    for key, left, right in pressed.values():
        if key == "s":
            skipped.append(frozenset((left, right)))
            assert skipped[-1] not in by_pair
            continue
        r = by_pair[frozenset((left, right))]
        shown_left = r["completion_a"] if r["shown_first"] == "a" else r["completion_b"]
        assert shown_left == left  # the side recorded is the side shown
        won = {"a": r["completion_a"], "b": r["completion_b"]}.get(r["winner"])
        assert won == {"a": left, "b": right, "t": None}[key]
    assert {r["shown_first"] for r in rows} == {"a", "b"}  # the order is drawn, not fixed

    # a restart resumes: the two pairs not labelled (the skipped one and the one never reached), then done
    page = Page(browser, run, tmp_path / "second.log", "--labeler", "ann")
    first = page.shown()
    assert first["count"] == "10 of 12 labeled"
    second = page.press("s")
    rest = {frozenset((s["left"], s["right"])) for s in (first, second)}
    assert skipped[0] in rest and not rest & set(by_pair) and len(rest) == 2
    assert not rest - {skipped[0]} & {frozenset((s["left"], s["right"])) for s in seen}
    page.press("s")
    assert page.tab.is_visible("#done") and "Nothing left this session: 10 of 12 labeled, 2 skipped" in \
        page.tab.inner_text("#done")
    page.stop()
    assert len(labels(run, "ann")) == 10

    # `rlaif agreement --human` (the CLI, on the file and on the folder) counts exactly these labels
    for human in (run / "labels" / "ann.jsonl", run / "labels"):
        proc = subprocess.run([sys.executable, "-m", "rlaif", "agreement", str(run), "--judges", "uf", "crit",
                               "--human", str(human)], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        report = json.loads((run / "agreement" / "uf__crit.json").read_text())
        assert report["human_pairs"] == {"uf": 10, "crit": 10}
        for judge in ("uf", "crit"):
            hits = [preference(judge, completions, r["completion_a"], r["completion_b"]) == r["winner"] for r in rows]
            assert report["human_agreement"][judge] == pytest.approx(sum(hits) / 10)


def test_the_last_label_stops_the_page(browser, tmp_path):
    """Every pair labelled: the page says so and the command ends by itself, exit 0."""
    store, _, _ = build_run(tmp_path / "run")
    page = Page(browser, store.root, tmp_path / "out.log", "--labeler", "bob", "--items", "disagree",
                "--judges", "uf", "crit", "--n", "2")
    assert page.shown()["count"] == "0 of 2 labeled"
    page.tab.click("button[data-choice=left]")  # the buttons work as the keys do
    page.tab.wait_for_function("() => document.getElementById('count').textContent.startsWith('1 of')")
    page.press("t")
    assert "All 2 pairs labeled" in page.tab.inner_text("#done")
    assert page.proc.wait(timeout=60) == 0
    assert [r["items"] for r in labels(store.root, "bob")] == ["disagree", "disagree"]
    assert "2 of 2 pairs labeled by bob" in page.stop()
