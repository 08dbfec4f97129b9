"""HTTP: the stdlib server on 127.0.0.1, authentication, routing of the API's paths and the /_control/ paths."""

from __future__ import annotations

import copy
import json
import secrets
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from rlaif.rehearsal.openai_server.batches import TERMINAL, listing, parse_multipart
from rlaif.rehearsal.openai_server.rules import ApiError, bad, mask_key


class _Server(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client that hung up (a refused stage)
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):  # noqa: N802
        self.server.app.handle(self, "GET")

    def do_POST(self):  # noqa: N802
        self.server.app.handle(self, "POST")

    def do_DELETE(self):  # noqa: N802
        self.server.app.handle(self, "DELETE")

    def log_message(self, *args):
        pass


class Http:
    """The HTTP side of `OpenAIServer` (a mixin)."""

    # HTTP
    def handle(self, h: "_Handler", method: str) -> None:
        if self._stopping.is_set():  # a stopped server answers nothing, even on a kept-alive connection
            h.close_connection = True
            return
        url = urlsplit(h.path)
        raw = h.rfile.read(int(h.headers.get("Content-Length") or 0))
        headers = {k.lower(): v for k, v in h.headers.items() if k.lower() != "authorization"}
        record = {"method": method, "path": url.path, "query": url.query, "headers": headers, "body": None,
                  "time": time.time()}
        extra: dict = {}
        with self._lock:
            self.keys.append(h.headers.get("Authorization", ""))  # in memory only: never in the state dir
        try:
            if self.rules.auth:
                self._authenticate(h.headers.get("Authorization"))
            status, payload, extra = self._route(method, url.path, parse_qs(url.query), headers, raw, record)
        except ApiError as e:
            status, payload = e.status, e.body
        record["status"] = status
        with self._lock:
            self._log.append(record)
            self._append("requests.jsonl", record)
        if status == 0:  # fault "disconnect": no answer at all
            h.close_connection = True
            return
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        h.send_response(status)
        h.send_header("Content-Type", extra.pop("Content-Type", None)
                      or ("application/octet-stream" if isinstance(payload, bytes) else "application/json"))
        h.send_header("Content-Length", str(len(data)))
        h.send_header("x-request-id", "req_" + secrets.token_hex(16))
        for k, v in extra.items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(data)

    def _authenticate(self, header: str | None) -> None:
        if not header or not header.startswith("Bearer ") or not header[7:].strip():
            raise ApiError(401, "You didn't provide an API key. You need to provide your API key in an Authorization "
                                "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password "
                                "field (with blank username) if you're accessing the API from your browser and are "
                                "prompted for a username. You can obtain an API key from "
                                "https://platform.openai.com/account/api-keys.")
        key = header[7:].strip()
        if key != self.api_key:
            raise ApiError(401, f"Incorrect API key provided: {mask_key(key)}. You can find your API key at "
                                f"https://platform.openai.com/account/api-keys.", code="invalid_api_key")

    def _route(self, method, path, query, headers, raw, record):
        parts = path.strip("/").split("/")
        if parts[:1] == ["_control"]:
            return self._control(parts[1:], raw)
        if parts[:1] != ["v1"]:
            raise ApiError(404, f"Invalid URL ({method} {path})")
        parts, body, form = parts[1:], None, None
        if method == "POST" and parts == ["files"]:
            form = parse_multipart(headers.get("content-type", ""), raw)
            record["body"] = {k: (v if isinstance(v, str) else {"filename": v[0], "bytes": len(v[1])})
                              for k, v in form.items()}
        elif method == "POST":
            try:
                body = json.loads(raw or b"{}")
                assert isinstance(body, dict)
            except (ValueError, AssertionError):
                raise bad("We could not parse the JSON body of your request. (HINT: This likely means you aren't using "
                          "your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was "
                          "not valid JSON. If you have trouble figuring out how to fix this, please contact us through "
                          "our help center at help.openai.com.)") from None
            record["body"] = body
        kind = self._take_fault(path, record["body"])
        if kind is not None:
            return self._fault_answer(kind, (body or {}).get("model"), path, body)
        if form is not None:
            return 200, self._upload(form), {}
        route = (method, parts[0] if parts else "", len(parts))
        if route[:2] == ("POST", "chat") and parts[1:] == ["completions"] or route == ("POST", "completions", 1):
            if self.delay:
                time.sleep(self.delay)
            return (*self.answer(path[3:], body), {})
        if route == ("GET", "models", 1):
            return 200, {"object": "list", "data": [self._model(m) for m in self.models]}, {}
        if route == ("GET", "models", 2):
            if parts[1] not in self.models:
                raise ApiError(404, f"The model '{parts[1]}' does not exist", param="model", code="model_not_found")
            return 200, self._model(parts[1]), {}
        if route == ("GET", "files", 1):
            with self._lock:
                return 200, listing([f["meta"] for f in self._files.values()], query), {}
        if parts[:1] == ["files"] and len(parts) in (2, 3):
            f = self._file(parts[1])
            if method == "GET" and len(parts) == 2:
                return 200, f["meta"], {}
            if method == "GET" and parts[2:] == ["content"]:
                return 200, f["data"], {}
            if method == "DELETE" and len(parts) == 2:
                with self._lock:
                    del self._files[parts[1]]
                    if self.state_dir:
                        for suffix in (".json", ".bin"):
                            (self.state_dir / "files" / (parts[1] + suffix)).unlink(missing_ok=True)
                return 200, {"id": parts[1], "object": "file", "deleted": True}, {}
        if route == ("POST", "batches", 1):
            return 200, self._create_batch(body), {}
        if route == ("GET", "batches", 1):
            with self._lock:
                return 200, listing(list(self._batches.values())[::-1], query), {}
        if parts[:1] == ["batches"] and len(parts) in (2, 3):
            with self._lock:
                b = self._batches.get(parts[1])
                if b is None:
                    raise ApiError(404, f"No batch found with id '{parts[1]}'.", param="batch_id")
                if method == "GET" and len(parts) == 2:
                    return 200, copy.deepcopy(b), {}
                if method == "POST" and parts[2:] == ["cancel"]:
                    if b["status"] in TERMINAL or b["status"] == "cancelling":
                        raise ApiError(409, f"Cannot cancel a batch with status '{b['status']}'.", param="batch_id")
                    b.update(status="cancelling", cancelling_at=int(time.time()))
                    self._save(f"batches/{b['id']}.json", b)
                    return 200, copy.deepcopy(b), {}
        raise ApiError(404, f"Invalid URL ({method} {path})")

    def _control(self, parts, raw):
        if parts == ["pause"]:
            self.pause_batches()
        elif parts == ["resume"]:
            self.resume_batches()
        elif parts == ["faults"]:
            self.add_faults(*json.loads(raw)["faults"])
        elif parts != ["state"]:
            raise ApiError(404, f"Invalid URL (/_control/{'/'.join(parts)})")
        with self._lock:
            return 200, {"processed": dict(self.processed), "requests": len(self._log), "faults": self.faults,
                         "paused": not self._running.is_set()}, {}

    def _model(self, model: str) -> dict:
        return {"id": model, "object": "model", "created": 1_700_000_000, "owned_by": self.rules.owned_by}
