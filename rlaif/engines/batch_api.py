"""The OpenAI Batch API as an engine: a stage's requests as JSONL files, answered within 24 hours at
half the price. It implements the same `Engine` protocol as the live endpoint engine.

    generate(requests) -> results
      1. Each request's body exactly as the live engine would send it (engines/providers.py), as one
         JSONL line with a custom id; lines grouped by API path and split into files under the
         API's limits (50,000 lines, 200 MB).
      2. A file's job key is the hash of its lines. The job's batch ids are written to the run dir
         (`batches/<job>.json`, atomically) as soon as a batch is created, and each batch carries the
         job key in its metadata, so a run killed at any point, even between creating the batch and
         writing the file, finds its batch again on the rerun and polls it instead of paying twice.
      3. Polls every `batch_poll_s` seconds, advancing the progress display as lines finish.
      4. Downloads the output and error files and maps each line back to its request by custom id.
         Lines that expired, were cancelled, or met a transient error (429, 5xx) go out again in a new
         batch, up to `max_retries` times; after that they come back retryable, and the next run
         sends them. A line the API refused (400, 401, 404, ...) stops the stage, as a live request
         would; a batch that failed as a whole for our file stops it too. A failed batch is never
         resumed: the rerun after the fix sends a new one (an expired or cancelled one is still
         collected: the lines it answered were paid for, and only the others go out again).
      5. Every message from this path (the Files and Batches endpoints' errors, a line's error, a
         failed batch's reasons) has the key removed before it is logged, raised or stored (`redact`).

The same lines give the same job key, so identical requests reuse a batch's results.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rlaif.core.records import content_hash
from rlaif.core.store import write_json
from rlaif.engines import providers
from rlaif.engines.base import Progress, Request, Result
from rlaif.engines.config import Endpoint
from rlaif.engines.openai_endpoint import (EndpointEngine, EndpointRefused, MalformedReply, describe, redact, refused,
                                           result_of)

log = logging.getLogger(__name__)

MAX_LINES, MAX_BYTES = 50_000, 190 * 2**20  # the API's limits are 50,000 lines and 200 MB per file
TERMINAL = ("completed", "failed", "expired", "cancelled")
TRANSIENT_BATCH_ERRORS = {"token_limit_exceeded", "rate_limit_exceeded", "server_error"}


@dataclass
class Job:
    """One batch input file: its requests (by index) and lines, and the batch answering them."""

    path: str  # /chat/completions or /completions
    ids: list[int]
    cids: list[str]  # their custom ids
    lines: bytes
    key: str
    batch: object | None = None  # the latest Batch object
    done: int = 0  # lines finished, as last reported
    errors: dict[int, str] = field(default_factory=dict)


def custom_id(i: int, key: str) -> str:
    cid = f"{i}-{key}"
    return cid if len(cid) <= 64 else f"{i}-{content_hash(key)}"


class BatchEngine:
    """One model behind the OpenAI Batch API; batch state under `state_dir` (the run's `batches/`)."""

    def __init__(self, endpoint: Endpoint, model: str, state_dir: str | Path):
        self.endpoint, self.model = endpoint, model
        self.live = EndpointEngine(endpoint, model)  # the key, the provider and the request shapes
        self.state_dir = Path(state_dir)
        self.window = endpoint.batch_window  # stages hand over several prompt chunks per call
        self.label = f"{model} @ {endpoint.base_url} (Batch API)"

    # ---- the engine protocol
    def generate(self, requests: Sequence[Request], progress: Progress | None = None) -> list[Result]:
        if not requests:
            return []
        e = self.endpoint
        bodies = self.live.bodies(requests)
        results: list[Result | None] = [None] * len(requests)
        pending, errors = list(range(len(requests))), {}
        try:
            self._rounds(requests, bodies, results, pending, errors, progress)
        except EndpointRefused:
            raise
        except Exception as exc:  # the Files or Batches endpoints failed (after the client's retries)
            msg, retryable, _ = describe(exc)
            msg = self._hide(msg)
            if not retryable:
                raise refused(e, self.model, msg) from None
            log.warning("%s: %s; the rows are kept and the batch resumed on the next run", self.label, msg)
            pending = [i for i, r in enumerate(results) if r is None]
            errors = dict.fromkeys(pending, msg)
        for i in pending:
            log.warning("request %s: %s (sent again on the next run)", requests[i].key, errors[i])
            results[i] = Result(error=errors[i], retryable=True)
        return results  # type: ignore[return-value]

    def _rounds(self, requests, bodies, results, pending, errors, progress) -> None:
        """Batches until every request is answered or has had its resends; `pending` is left holding
        the ones still unanswered, `errors` their reasons."""
        from openai import OpenAI

        e = self.endpoint
        seen: set[str] = set()  # batches collected in this call: a resend needs a new one
        with OpenAI(base_url=e.base_url, api_key=self.live._key, max_retries=e.max_retries,
                    timeout=e.timeout_s) as client:
            for attempt in range(e.max_retries + 1):
                if attempt:
                    log.info("%d requests go out again in a new batch", len(pending))
                    time.sleep(e.batch_poll_s)
                jobs = self._jobs(requests, bodies, pending)
                for job in jobs:
                    self._start(client, job, seen)
                self._wait(client, jobs, progress if attempt == 0 else None)
                pending.clear()
                for job in jobs:
                    seen.add(job.batch.id)
                    for i, result in self._collect(client, job).items():
                        if result is None:
                            pending.append(i)
                            errors[i] = job.errors.get(i, "no answer in the batch")
                        else:
                            results[i] = result
                if not pending:
                    return

    def close(self) -> None:
        pass

    def _hide(self, text: str) -> str:
        return redact(text, self.live._key)

    # ---- jobs
    def _jobs(self, requests: Sequence[Request], bodies: list[dict], ids: list[int]) -> list[Job]:
        by_path: dict[str, list[tuple[int, str, bytes]]] = {}
        for i in ids:
            path, cid = providers.route(requests[i]), custom_id(i, requests[i].key)
            line = {"custom_id": cid, "method": "POST", "url": "/v1" + path, "body": bodies[i]}
            by_path.setdefault(path, []).append((i, cid, (json.dumps(line, ensure_ascii=False) + "\n").encode()))
        jobs = []
        for path, lines in by_path.items():
            start = 0
            while start < len(lines):
                end, size = start, 0
                while end < len(lines) and end - start < MAX_LINES and size + len(lines[end][2]) <= MAX_BYTES:
                    size += len(lines[end][2])
                    end += 1
                end = max(end, start + 1)
                part = lines[start:end]
                data = b"".join(x for _, _, x in part)
                key = content_hash(self.model, path, hashlib.sha256(data).hexdigest())
                jobs.append(Job(path, [i for i, _, _ in part], [c for _, c, _ in part], data, key))
                start = end
        return jobs

    def _state(self, job: Job) -> Path:
        return self.state_dir / f"{job.key}.json"

    def _start(self, client, job: Job, seen: set[str]) -> None:
        """The batch answering `job`: the one its state names (unless collected already in this call),
        one created by a run killed before it wrote the state, or a new one."""
        path = self._state(job)
        state = json.loads(path.read_text()) if path.exists() else {"job": job.key, "batches": []}
        latest = state["batches"][-1] if state["batches"] else self._adopt(client, job.key)
        if latest is not None and latest not in seen:
            batch = client.batches.retrieve(latest)
            if batch.status != "failed":
                job.batch = batch
                if latest not in state["batches"]:
                    state["batches"].append(latest)
                    write_json(path, state)
                log.info("job %s: resuming batch %s (%s)", job.key, latest, batch.status)
                return
            log.info("job %s: batch %s failed as a whole before; sending a new one", job.key, latest)
        upload = client.files.create(file=(f"rlaif-{job.key}.jsonl", job.lines), purpose="batch")
        job.batch = client.batches.create(input_file_id=upload.id, endpoint="/v1" + job.path,  # type: ignore[arg-type]
                                          completion_window="24h", metadata={"rlaif_job": job.key})
        state.update(model=self.model, path=job.path, requests=len(job.ids))
        state["batches"].append(job.batch.id)
        write_json(path, state)  # at once: a kill from here on resumes this batch
        log.info("job %s: batch %s created for %d requests", job.key, job.batch.id, len(job.ids))

    def _adopt(self, client, key: str) -> str | None:
        """A batch for this job created by a run killed before it wrote the state file."""
        for b in client.batches.list(limit=100).data:
            if (b.metadata or {}).get("rlaif_job") == key and b.status not in ("failed", "cancelled", "cancelling"):
                return b.id
        return None

    def _wait(self, client, jobs: list[Job], progress: Progress | None) -> None:
        while True:
            for job in jobs:
                if job.batch.status not in TERMINAL:
                    job.batch = client.batches.retrieve(job.batch.id)
                counts = job.batch.request_counts
                done = (counts.completed + counts.failed) if counts else 0
                if progress and done > job.done:
                    progress(done - job.done)
                job.done = max(job.done, done)
            if all(job.batch.status in TERMINAL for job in jobs):
                return
            time.sleep(self.endpoint.batch_poll_s)

    # ---- results
    def _collect(self, client, job: Job) -> dict[int, Result | None]:
        """Each of the job's requests: its Result, or None to send it again (its reason in job.errors)."""
        b = job.batch
        if b.status == "failed":
            errs = list((b.errors.data if b.errors else None) or [])
            ours = [x for x in errs if x.code not in TRANSIENT_BATCH_ERRORS]
            if ours or not errs:
                first = ours[0] if ours else None
                where = f" (line {first.line})" if first is not None and first.line else ""
                why = f"{first.code}: {first.message}{where}" if first is not None else "no reason given"
                raise EndpointRefused(self._hide(f"{self.endpoint.base_url}: batch {b.id} for model {self.model} failed: "
                                                 f"{why}; a rerun sends a new batch"))
        by_cid = dict(zip(job.cids, job.ids))
        out: dict[int, Result | None] = dict.fromkeys(job.ids)
        for fid in (b.output_file_id, b.error_file_id):
            if not fid:
                continue
            try:
                text = client.files.content(fid).text
            except Exception as exc:  # an output file gone (they expire): its lines go out again
                log.warning("batch %s: cannot read file %s (%s)", b.id, fid, self._hide(str(exc)))
                continue
            for raw in text.splitlines():
                if not raw.strip():
                    continue
                line = json.loads(raw)
                i = by_cid.get(line.get("custom_id"))
                if i is None:
                    continue
                resp, err = line.get("response"), line.get("error")
                if resp and resp.get("status_code") == 200:
                    try:
                        out[i] = result_of(resp["body"])
                        continue
                    except MalformedReply as exc:  # sent again, as a transient error
                        msg = self._hide(str(exc))
                elif resp:
                    code = resp.get("status_code", 0)
                    error = ((resp.get("body") or {}).get("error") or {})
                    msg = self._hide(f"HTTP {code}: {error.get('message', '')}")
                    if not (code in (408, 409, 429) or code >= 500) or error.get("code") == "insufficient_quota":
                        raise refused(self.endpoint, self.model, msg + f" (batch {b.id})")
                else:
                    msg = self._hide(f"{(err or {}).get('code', 'no answer')}: {(err or {}).get('message', '')}")
                job.errors[i] = msg
        if b.status in TERMINAL and b.input_file_id:
            try:
                client.files.delete(b.input_file_id)
            except Exception:  # already gone; nothing depends on it
                pass
        return out
