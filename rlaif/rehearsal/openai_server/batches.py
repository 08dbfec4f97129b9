"""The Files and Batch APIs: uploads, a batch's life (validating -> in_progress -> finalizing -> a
terminal status) in a thread, its input file checked as the Batch guide says, its lines answered by
the live endpoints' rules (or by vLLM's own batch runner)."""

from __future__ import annotations

import copy
import email.parser
import email.policy
import json
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from rlaif.rehearsal.openai_server.rules import ApiError, bad, check_fields

BATCH_ENDPOINTS = ("/v1/chat/completions", "/v1/embeddings", "/v1/completions", "/v1/responses")
TERMINAL = ("completed", "failed", "expired", "cancelled")


class Batches:
    """The Files and Batch APIs of `OpenAIServer` (a mixin)."""

    def pause_batches(self) -> None:
        self._running.clear()

    def resume_batches(self) -> None:
        self._running.set()

    # files
    def _file(self, file_id: str) -> dict:
        with self._lock:
            f = self._files.get(file_id)
        if f is None:
            raise ApiError(404, f"No such File object: {file_id}", param="id")
        return f

    def _store_file(self, filename: str, data: bytes, purpose: str) -> dict:
        meta = {"id": "file-" + secrets.token_urlsafe(16).replace("-", "a").replace("_", "b"), "object": "file",
                "bytes": len(data), "created_at": int(time.time()), "filename": filename, "purpose": purpose,
                "status": "processed", "expires_at": None, "status_details": None}
        with self._lock:
            self._files[meta["id"]] = {"meta": meta, "data": data}
            self._save(f"files/{meta['id']}.bin", data)
            self._save(f"files/{meta['id']}.json", meta)
        return meta

    def _upload(self, form: dict) -> dict:
        for name in ("purpose", "file"):
            if name not in form:
                raise bad(f"Missing required parameter: '{name}'.", name, "missing_required_parameter")
        purpose = form["purpose"]
        if purpose not in ("assistants", "batch", "fine-tune", "vision", "user_data", "evals"):
            raise bad(f"'{purpose}' is not one of ['fine-tune', 'assistants', 'batch', 'user_data', 'responses', "
                      f"'vision', 'evals'] - 'purpose'", "purpose")
        filename, data = form["file"]
        if purpose == "batch" and not filename.endswith(".jsonl"):
            raise bad("Invalid file format for Batch API. Must be .jsonl")
        return self._store_file(filename, data, purpose)

    # batches
    def _create_batch(self, body: dict) -> dict:
        check_fields(body, {"input_file_id", "endpoint", "completion_window", "metadata", "output_expires_after"})
        for name in ("input_file_id", "endpoint", "completion_window"):
            if name not in body:
                raise bad(f"Missing required parameter: '{name}'.", name, "missing_required_parameter")
        if body["endpoint"] not in BATCH_ENDPOINTS:
            raise bad(f"Invalid value: '{body['endpoint']}'. Supported values are: '/v1/chat/completions', "
                      f"'/v1/embeddings', '/v1/completions', and '/v1/responses'.", "endpoint", "invalid_value")
        if body["completion_window"] != "24h":
            raise bad(f"Invalid value: '{body['completion_window']}'. Supported values are: '24h'.",
                      "completion_window", "invalid_value")
        meta = body.get("metadata")
        if meta is not None and (not isinstance(meta, dict) or len(meta) > 16):
            raise bad("Invalid 'metadata': too many properties. Expected an object with at most 16 properties.",
                      "metadata", "object_above_max_properties")
        f = self._file(body["input_file_id"])
        if f["meta"]["purpose"] != "batch":
            raise bad(f"The input file {body['input_file_id']} must have purpose 'batch'.", "input_file_id")
        now = int(time.time())
        b = {"id": "batch_" + secrets.token_hex(16), "object": "batch", "endpoint": body["endpoint"], "model": None,
             "errors": None, "input_file_id": body["input_file_id"], "completion_window": "24h",
             "status": "validating", "output_file_id": None, "error_file_id": None, "created_at": now,
             "in_progress_at": None, "expires_at": now + 86400, "finalizing_at": None, "completed_at": None,
             "failed_at": None, "expired_at": None, "cancelling_at": None, "cancelled_at": None,
             "request_counts": {"total": 0, "completed": 0, "failed": 0}, "metadata": meta,
             "usage": {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0,
                       "input_tokens_details": {"cached_tokens": 0},
                       "output_tokens_details": {"reasoning_tokens": 0}}}
        with self._lock:
            self._batches[b["id"]], self._results[b["id"]] = b, []
            self._save(f"batches/{b['id']}.json", b)
            created = copy.deepcopy(b)
        self._spawn(b["id"])
        return created

    def _spawn(self, batch_id: str) -> None:
        threading.Thread(target=self._run_batch, args=(batch_id,), daemon=True).start()

    def _set(self, b: dict, **fields) -> None:
        with self._lock:
            b.update(fields)
            self._save(f"batches/{b['id']}.json", b)

    def _wait(self, b: dict) -> bool:
        """Sleep `batch_seconds`, then hold while paused (unless cancelled); False once the server stops."""
        if self.batch_seconds and self._stopping.wait(self.batch_seconds):
            return False
        while not self._running.wait(0.05) and b["status"] != "cancelling":
            pass
        return not self._stopping.is_set()

    def _run_batch(self, batch_id: str) -> None:
        b = self._batches[batch_id]
        lines, errors = validate_batch_file(self._files.get(b["input_file_id"], {}).get("data", b""), b["endpoint"])
        with self._lock:
            if not errors and self.batch_fail_whole > 0:  # a fault: the whole batch fails, as for an unpaid bill
                self.batch_fail_whole -= 1
                errors = [{"code": "billing_hard_limit_reached", "message": f"Billing hard limit reached (key "
                           f"{self.api_key}).", "param": None, "line": None}]
        if errors:
            self._set(b, status="failed", failed_at=int(time.time()), errors={"object": "list", "data": errors})
            return
        if b["status"] == "validating":
            self._set(b, status="in_progress", in_progress_at=int(time.time()), model=lines[0]["body"]["model"],
                      request_counts={"total": len(lines), "completed": 0, "failed": 0})
        done, for_vllm = {r["custom_id"] for r in self._results[batch_id]}, []
        for line in lines:
            if line["custom_id"] in done:
                continue
            if not self._wait(b):
                return
            if b["status"] == "cancelling":
                break
            result = self._answer_line(b, line)
            if self.vllm_model and (result["response"] or {}).get("status_code") == 200:
                for_vllm.append(line)  # it passed the API's rules: vLLM answers it
            else:
                self._record(b, result)
        if for_vllm and b["status"] != "cancelling" and not self._run_vllm(b, for_vllm):
            return
        self._finish(b, lines)

    def _answer_line(self, b: dict, line: dict) -> dict:
        cid = line["custom_id"]
        result = {"id": "batch_req_" + secrets.token_hex(12), "custom_id": cid, "response": None, "error": None}
        if cid in self.batch_expire:
            result["error"] = {"code": "batch_expired",
                               "message": "This request could not be executed before the completion window expired."}
            return result
        if cid in self.batch_fail:
            status, body, _ = self._fault_answer(500, line["body"].get("model"))
        else:
            status, body = self.answer(b["endpoint"], line["body"])
        result["response"] = {"status_code": status, "request_id": secrets.token_hex(16), "body": body}
        return result

    def _record(self, b: dict, result: dict) -> None:
        with self._lock:
            self._results[b["id"]].append(result)
            self._append(f"batches/{b['id']}.results.jsonl", result)  # the journal a restart resumes from
            if result["response"] is not None:
                self.processed[result["custom_id"]] += 1
            ok = (result["response"] or {}).get("status_code") == 200
            counts = b["request_counts"]
            counts["completed" if ok else "failed"] += 1
            usage = ((result["response"] or {}).get("body") or {}).get("usage") or {}
            b["usage"]["input_tokens"] += usage.get("prompt_tokens", 0)
            b["usage"]["output_tokens"] += usage.get("completion_tokens", 0)
            b["usage"]["total_tokens"] += usage.get("total_tokens", 0)
            self._save(f"batches/{b['id']}.json", b)

    def _finish(self, b: dict, lines: list[dict]) -> None:
        cancelled = b["status"] == "cancelling"
        self._set(b, finalizing_at=int(time.time()), **({} if cancelled else {"status": "finalizing"}))
        with self._lock:
            results = list(self._results[b["id"]])
        answered = {r["custom_id"] for r in results}
        results += [{"id": "batch_req_" + secrets.token_hex(12), "custom_id": x["custom_id"], "response": None,
                     "error": {"code": "batch_cancelled", "message": "This request was cancelled."}}
                    for x in lines if x["custom_id"] not in answered]
        good = [r for r in results if (r["response"] or {}).get("status_code") == 200]
        failed = [r for r in results if r not in good]
        jsonl = lambda rs: "".join(json.dumps(r) + "\n" for r in rs).encode()  # noqa: E731
        out = self._store_file("batch_output.jsonl", jsonl(good), "batch_output")["id"] if good else None
        err = self._store_file("batch_errors.jsonl", jsonl(failed), "batch_output")["id"] if failed else None
        now = int(time.time())
        if cancelled:
            self._set(b, status="cancelled", cancelled_at=now, output_file_id=out, error_file_id=err)
        elif any((r["error"] or {}).get("code") == "batch_expired" for r in results):
            self._set(b, status="expired", expired_at=now, output_file_id=out, error_file_id=err)
        else:
            self._set(b, status="completed", completed_at=now, output_file_id=out, error_file_id=err)

    def _run_vllm(self, b: dict, lines: list[dict]) -> bool:
        """Answer `lines` with vLLM's own batch runner on the model directory `vllm_model` (CPU settings).
        The process that starts this server holds /tmp/rlaif-heavy.lock for it (a nested flock would deadlock)."""
        with tempfile.TemporaryDirectory() as tmp:
            src, dst = Path(tmp) / "in.jsonl", Path(tmp) / "out.jsonl"
            src.write_text("".join(json.dumps(x) + "\n" for x in lines))
            cmd = [sys.executable, "-m", "vllm.entrypoints.openai.run_batch", "-i", str(src), "-o", str(dst),
                   "--model", self.vllm_model, "--served-model-name", lines[0]["body"]["model"],
                   "--dtype", "float32", "--enforce-eager", "--max-model-len", "2048"]
            env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
            run = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            if run.returncode != 0 or not dst.exists():
                self._set(b, status="failed", failed_at=int(time.time()), errors={"object": "list", "data": [
                    {"code": "vllm_failed", "message": run.stderr[-2000:], "param": None, "line": None}]})
                return False
            for out in (json.loads(x) for x in dst.read_text().splitlines() if x.strip()):
                self._record(b, out)
        return True


def validate_batch_file(data: bytes, endpoint: str) -> tuple[list[dict], list[dict]]:
    """The Batch API's checks of an input file: (lines, errors); errors as in `batch.errors.data`."""
    lines, errors, seen, models = [], [], set(), set()

    def err(code, message, line, param=None):
        errors.append({"code": code, "message": message, "param": param, "line": line})

    text = data.decode("utf-8", errors="replace")
    if not text.strip():
        err("empty_file", "The input file is empty.", None)
    for n, raw in enumerate(text.splitlines(), 1):
        try:
            line = json.loads(raw)
            assert isinstance(line, dict)
        except (ValueError, AssertionError):
            err("invalid_json_line", "This line is not parseable as valid JSON.", n)
            continue
        missing = [k for k in ("custom_id", "method", "url", "body") if k not in line]
        if missing:
            err("missing_required_parameter", f"Missing required parameter: '{missing[0]}'.", n, missing[0])
            continue
        if line["method"] != "POST":
            err("invalid_value", f"Invalid value: '{line['method']}'. Supported values are: 'POST'.", n, "method")
        if line["url"] != endpoint:
            err("url_mismatch", f"The url '{line['url']}' does not match the batch's endpoint '{endpoint}'.", n, "url")
        if line["custom_id"] in seen:
            err("duplicate_custom_id", f"The custom_id '{line['custom_id']}' is used more than once in this file. "
                                       "Each request must have a unique custom_id.", n, "custom_id")
        seen.add(line["custom_id"])
        model = (line["body"] or {}).get("model") if isinstance(line["body"], dict) else None
        if not model:
            err("missing_required_parameter", "Missing required parameter: 'body.model'.", n, "body.model")
        elif models and model not in models:
            err("model_mismatch", f"The model '{model}' differs from the model of earlier lines; a batch file must use "
                                  "one model.", n, "body.model")
        models.add(model)
        lines.append(line)
    if len(lines) > 50_000:
        err("too_many_tasks", "The input file has more than 50,000 requests.", None)
    return lines, errors


def listing(items: list[dict], query: dict) -> dict:
    """A list page: `after` (an id) and `limit`, newest first for batches as the API pages them."""
    after, limit = query.get("after", [None])[0], int(query.get("limit", ["20"])[0])
    if after:
        ids = [x["id"] for x in items]
        items = items[ids.index(after) + 1:] if after in ids else []
    page = copy.deepcopy(items[:limit])
    return {"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None, "has_more": len(items) > limit}


def parse_multipart(content_type: str, raw: bytes) -> dict:
    """Form fields of a multipart/form-data body: text fields as str, files as (filename, bytes)."""
    if not content_type.startswith("multipart/form-data"):
        raise bad("Invalid Content-Type header (expected multipart/form-data).")
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + raw)
    form = {}
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True) or b""
        filename = part.get_filename()
        form[name] = (filename, payload) if filename is not None else payload.decode()
    return form
