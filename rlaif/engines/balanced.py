"""One model behind several OpenAI-compatible servers: requests spread over them, a dead one skipped.

A member or judge lists more servers of the same model with `endpoint.base_urls` (beside
`base_url`). Requests go out in batches of `max_concurrency`; each server takes the next batch as
soon as it has finished its last one, so a faster server takes more. A batch whose every request
failed transiently (connection refused, timeouts, 5xx after the client's own retries) marks its
server down for `cooldown_s` and goes to a server that has not tried it yet; only when every server
has failed it do its rows come back as retryable failures (kept, and sent again on the next run).
An error no retry fixes (`EndpointRefused`: 401, 404, ...) stops the stage, as with one server.

Each server is an `EndpointEngine` of its own, so retries, keys and errors behave as documented
in openai_endpoint.py; this module only decides which server sends which batch.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from rlaif.engines.base import Progress, Request, Result
from rlaif.engines.openai_endpoint import Endpoint, EndpointEngine

log = logging.getLogger(__name__)


@dataclass
class _Batch:
    start: int
    requests: Sequence[Request]
    tried: set[int] = field(default_factory=set)
    results: list[Result] | None = None


def all_failed(results: list[Result]) -> bool:
    """Nothing came back and a later try may work: the server, not the requests, is the problem."""
    return bool(results) and all(not r.ok and r.retryable for r in results)


class BalancedEngine:
    def __init__(self, endpoint: Endpoint, model: str, cooldown_s: float = 30.0):
        self.urls = [endpoint.base_url, *endpoint.base_urls]
        self.servers = [EndpointEngine(endpoint.model_copy(update={"base_url": u, "base_urls": []}), model)
                        for u in self.urls]
        self.batch_size, self.cooldown_s = endpoint.max_concurrency, cooldown_s
        self.down: dict[int, float] = {}  # server index -> when it was marked down
        self.label = f"{model} @ {len(self.urls)} servers"

    def live(self) -> list[int]:
        """Servers not marked down within the cooldown; all of them if every one is."""
        now = time.monotonic()
        up = [i for i in range(len(self.servers)) if now - self.down.get(i, -1e18) >= self.cooldown_s]
        return up or list(range(len(self.servers)))

    def generate(self, requests: Sequence[Request], progress: Progress | None = None) -> list[Result]:
        if not requests:
            return []
        queue = deque(_Batch(i, requests[i:i + self.batch_size]) for i in range(0, len(requests), self.batch_size))
        batches = list(queue)
        live = set(self.live())
        cond = threading.Condition()
        open_batches = [len(batches)]
        errors: list[BaseException] = []

        def finish(b: _Batch, results: list[Result]) -> None:
            b.results = results
            open_batches[0] -= 1
            if progress:
                progress(len(results))
            cond.notify_all()

        def serve(i: int) -> None:
            while True:
                with cond:
                    while not queue and open_batches[0] and not errors:
                        cond.wait()
                    if not queue or errors:
                        return
                    b = queue.popleft()
                    b.tried.add(i)
                try:
                    results = self.servers[i].generate(b.requests)
                except BaseException as e:  # EndpointRefused and bugs: stop every server
                    with cond:
                        errors.append(e)
                        cond.notify_all()
                    return
                with cond:
                    if not all_failed(results):
                        finish(b, results)
                        continue
                    log.warning("%s: every request of a batch failed (%s); marked down for %.0f s",
                                self.urls[i], results[0].error, self.cooldown_s)
                    self.down[i] = time.monotonic()
                    live.discard(i)
                    if live - b.tried:
                        queue.appendleft(b)  # another server takes it
                        cond.notify_all()
                    else:
                        finish(b, results)  # every server failed it: kept as retryable rows
                    if not live:  # nobody left to take the rest: they fail here, as one server would
                        while queue:
                            rest = queue.popleft()
                            finish(rest, [Result(error=f"every server of {self.label} is down", retryable=True)
                                          for _ in rest.requests])
                    return

        threads = [threading.Thread(target=serve, args=(i,), daemon=True) for i in sorted(live)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        out: list[Result] = []
        for b in batches:
            out += b.results  # type: ignore[arg-type]
        return out

    def close(self) -> None:
        for s in self.servers:
            s.close()
