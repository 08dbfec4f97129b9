"""The labeling page: a small HTTP server on 127.0.0.1 that shows one pair at a time and writes each
label as it is made (`judges.labeling.Session`).

    serve(session, port, title) -> LabelServer      started; `.url`, `.serve_forever()`, `.shutdown()`

Standard library only (`http.server`), one page of plain HTML, CSS and JavaScript inline (no CDN: it
works offline). Completions are untrusted model output: their markdown is rendered here, on the
server, by markdown-it-py with raw HTML off (every `<` is escaped), images off (no page fetches a URL
a model wrote), and the page's Content-Security-Policy lets only its own script run and only its own
origin be asked. Requests for another host name (DNS rebinding) and label posts from another origin
are refused.

    GET  /            the page
    GET  /api/item    the pair to show: {item_id, prompt_html, left_html, right_html, left_id, right_id, progress}
    POST /api/label   {"item_id": ..., "choice": "left" | "right" | "tie" | "skip"} -> the next pair, as above
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
from functools import lru_cache
from html import escape
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from rlaif.judges.labeling import Item, Session

log = logging.getLogger(__name__)
CHOICES = ("left", "right", "tie", "skip")


@lru_cache(maxsize=1)
def _markdown():
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": False, "breaks": True}).enable(["table", "strikethrough"]).disable("image")


def render(text: str) -> str:
    """Markdown to HTML with every raw tag escaped; fenced code as <pre><code>."""
    return _markdown().render(text or "")


def item_json(session: Session, item: Item | None) -> dict:
    progress = {"labeled": len(session.labeled), "total": len(session.items), "skipped": len(session.skipped),
                "labeler": session.file.labeler, "file": str(session.file.path)}
    if item is None:
        return {"item_id": None, "progress": progress, "complete": session.complete}
    left, right = (item.a, item.b) if session.left(item) == "a" else (item.b, item.a)
    turns = "".join(f'<div class="turn"><span class="role">{escape(m.role)}</span>{render(m.content)}</div>'
                    for m in item.prompt.messages)
    return {"item_id": item.item_id, "prompt_html": turns, "left_html": render(left.text or ""),
            "right_html": render(right.text or ""), "left_id": left.completion_id, "right_id": right.completion_id,
            "progress": progress, "complete": False}


class LabelServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, session: Session, title: str):
        super().__init__(("127.0.0.1", port), Handler)
        self.session, self.title = session, title

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/"

    def hosts(self) -> set[str]:
        port = self.server_address[1]
        return {f"127.0.0.1:{port}", f"localhost:{port}"}


class Handler(BaseHTTPRequestHandler):
    server: LabelServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args) -> None:  # to the run's log, not the terminal
        log.info("%s %s", self.address_string(), format % args)

    def _send(self, status: int, body: bytes, ctype: str, nonce: str | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        script = f"'nonce-{nonce}'" if nonce else "'none'"
        self.send_header("Content-Security-Policy", f"default-src 'none'; script-src {script}; style-src "
                         "'unsafe-inline'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; "
                         "form-action 'none'; frame-ancestors 'none'")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, obj: dict, status: int = 200) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json")

    def _allowed(self) -> bool:
        if self.headers.get("Host") not in self.server.hosts():
            self._json({"error": "unknown host"}, 421)
            return False
        return True

    def do_GET(self) -> None:
        if not self._allowed():
            return
        session = self.server.session
        if self.path == "/":
            nonce = secrets.token_urlsafe(16)
            self._send(200, page(self.server.title, nonce).encode(), "text/html; charset=utf-8", nonce)
        elif self.path == "/api/item":
            self._json(item_json(session, session.current()))
        else:
            self._json({"error": "not found"}, 404)

    def do_POST(self) -> None:
        if not self._allowed():
            return
        origin = self.headers.get("Origin")
        if self.path != "/api/label":
            self._json({"error": "not found"}, 404)
            return
        if (origin and origin.removeprefix("http://") not in self.server.hosts()) or \
                not (self.headers.get("Content-Type") or "").startswith("application/json"):
            self._json({"error": "a label comes from the page, as JSON"}, 403)
            return
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            item_id, choice = body["item_id"], body["choice"]
            if choice not in CHOICES or not isinstance(item_id, str):
                raise ValueError(choice)
        except (ValueError, KeyError, TypeError):
            self._json({"error": f"expected {{item_id, choice: {' | '.join(CHOICES)}}}"}, 400)
            return
        session = self.server.session
        session.answer(item_id, choice)
        self._json(item_json(session, session.current()))
        if session.complete:  # every pair labelled: the command ends (after this answer went out)
            threading.Thread(target=self.server.shutdown, daemon=True).start()


def serve(session: Session, port: int = 0, title: str = "rlaif label") -> LabelServer:
    """The server, bound (port 0: a free one); the caller runs `serve_forever()`."""
    return LabelServer(port, session, title)


def page(title: str, nonce: str) -> str:
    return PAGE.replace("{{title}}", escape(title)).replace("{{nonce}}", nonce)


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{title}}</title>
<style>
  :root { --line: #d0d7de; --muted: #57606a; --accent: #0969da; }
  * { box-sizing: border-box; }
  body { margin: 0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
         color: #1f2328; background: #f6f8fa; }
  header { display: flex; gap: 1rem; align-items: center; padding: .6rem 1.2rem; background: #fff;
           border-bottom: 1px solid var(--line); position: sticky; top: 0; z-index: 1; }
  header h1 { font-size: 1rem; margin: 0; font-weight: 600; }
  #progress { margin-left: auto; color: var(--muted); white-space: nowrap; }
  progress { width: 12rem; height: .6rem; }
  main { max-width: 1400px; margin: 0 auto; padding: 1rem 1.2rem 6rem; }
  .card { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: .4rem 1rem; }
  #prompt { margin-bottom: 1rem; }
  .turn .role { display: inline-block; font-size: .75rem; text-transform: uppercase; letter-spacing: .04em;
                color: var(--muted); margin-top: .6rem; }
  #pair { display: grid; grid-template-columns: 1fr 1fr; gap: 1rem; }
  #pair h2 { font-size: .9rem; margin: .4rem 0; color: var(--muted); }
  #pair h2 kbd { font-size: .85rem; }
  .answer { overflow-wrap: anywhere; }
  pre { background: #f6f8fa; border: 1px solid var(--line); border-radius: 6px; padding: .6rem .8rem;
        overflow-x: auto; }
  code { font: 13px/1.45 ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace; }
  :not(pre) > code { background: #eff1f3; padding: .1em .3em; border-radius: 4px; }
  table { border-collapse: collapse; } td, th { border: 1px solid var(--line); padding: .2rem .5rem; }
  footer { position: fixed; bottom: 0; left: 0; right: 0; display: flex; gap: .6rem; justify-content: center;
           padding: .7rem; background: #fff; border-top: 1px solid var(--line); }
  button { font: inherit; padding: .45rem 1.1rem; border: 1px solid var(--line); border-radius: 6px;
           background: #f6f8fa; cursor: pointer; }
  button:hover { border-color: var(--accent); }
  button:disabled { opacity: .5; cursor: default; }
  kbd { font: 12px ui-monospace, monospace; border: 1px solid var(--line); border-bottom-width: 2px;
        border-radius: 4px; padding: 0 .35em; background: #fff; }
  #done { display: none; font-size: 1.1rem; }
</style></head>
<body>
<header><h1>{{title}}</h1><span id="labeler"></span>
  <span id="progress"><progress id="bar" max="1" value="0"></progress> <span id="count"></span></span></header>
<main>
  <section id="prompt" class="card"></section>
  <section id="pair">
    <article class="card"><h2>A <kbd>a</kbd></h2><div id="left" class="answer"></div></article>
    <article class="card"><h2>B <kbd>b</kbd></h2><div id="right" class="answer"></div></article>
  </section>
  <section id="done" class="card"></section>
</main>
<footer>
  <button data-choice="left">A is better <kbd>a</kbd></button>
  <button data-choice="tie">Tie <kbd>t</kbd></button>
  <button data-choice="right">B is better <kbd>b</kbd></button>
  <button data-choice="skip">Skip <kbd>s</kbd></button>
</footer>
<script nonce="{{nonce}}">
"use strict";
let current = null, busy = false;
const $ = (id) => document.getElementById(id);
const buttons = document.querySelectorAll("footer button");
function show(data) {
  const p = data.progress;
  current = data.item_id;
  document.body.dataset.item = current || "";
  $("labeler").textContent = "labeler: " + p.labeler;
  $("count").textContent = p.labeled + " of " + p.total + " labeled" + (p.skipped ? ", " + p.skipped + " skipped" : "");
  $("bar").max = p.total; $("bar").value = p.labeled;
  const shown = !!current;
  for (const id of ["prompt", "pair"]) $(id).style.display = shown ? "" : "none";
  for (const b of buttons) b.disabled = !shown;
  $("done").style.display = shown ? "none" : "block";
  if (!shown) {
    $("done").textContent = data.complete
      ? "All " + p.total + " pairs labeled; the labels are in " + p.file + ". The server has stopped."
      : "Nothing left this session: " + p.labeled + " of " + p.total + " labeled, " + p.skipped +
        " skipped (shown again the next time rlaif label runs). Labels: " + p.file;
    return;
  }
  $("prompt").innerHTML = data.prompt_html;   // rendered and escaped by the server
  $("left").innerHTML = data.left_html;
  $("right").innerHTML = data.right_html;
  $("left").dataset.completion = data.left_id;
  $("right").dataset.completion = data.right_id;
  window.scrollTo(0, 0);
}
async function choose(choice) {
  if (busy || !current) return;
  busy = true;
  try {
    const r = await fetch("/api/label", {method: "POST", headers: {"Content-Type": "application/json"},
                                         body: JSON.stringify({item_id: current, choice: choice})});
    show(await r.json());
  } finally { busy = false; }
}
const keys = {a: "left", b: "right", t: "tie", s: "skip"};
document.addEventListener("keydown", (e) => {
  if (e.ctrlKey || e.metaKey || e.altKey || e.repeat) return;
  const c = keys[e.key.toLowerCase()];
  if (c) { e.preventDefault(); choose(c); }
});
for (const b of buttons) b.addEventListener("click", () => choose(b.dataset.choice));
fetch("/api/item").then((r) => r.json()).then(show);
</script>
</body></html>
"""
