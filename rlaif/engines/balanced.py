"""One model behind several OpenAI-compatible servers: requests spread over them, a dead one skipped.

A member or judge lists more servers of the same model with `endpoint.base_urls` (beside
`base_url`). A generate call's requests go out in batches, two per live server (at least
`max_concurrency` each); each server takes the next batch as soon as it has finished its last
one, so a faster server takes more. A replica on a Ray cluster has servers of its `own` (replica i
of R: every R-th server from the i-th), so R replicas over R servers each keep one busy, as one
worker per GPU would; the other servers are its fallback when all of its own are down. A batch whose every request
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
from rlaif.engines.config import Endpoint
from rlaif.engines.openai_endpoint import EndpointEngine

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
    def __init__(self, endpoint: Endpoint, model: str, cooldown_s: float = 30.0, own: list[int] | None = None):
        self.urls = [endpoint.base_url, *endpoint.base_urls]
        self.own = own  # None: every server is its own
        self.servers = [EndpointEngine(endpoint.model_copy(update={"base_url": u, "base_urls": []}), model)
                        for u in self.urls]
        self.batch_size, self.cooldown_s = endpoint.max_concurrency, cooldown_s
        self.down: dict[int, float] = {}  # server index -> when it was marked down
        self.label = f"{model} @ {len(self.urls)} servers"

    def live(self) -> list[int]:
        """Its own servers not marked down within the cooldown, else the others that are up; all of
        them if every one is down."""
        now = time.monotonic()
        up = [i for i in range(len(self.servers)) if now - self.down.get(i, -1e18) >= self.cooldown_s]
        own_servers = [i for i in up if self.own is None or i in self.own]
        return own_servers or up or list(range(len(self.servers)))

    def generate(self, requests: Sequence[Request], progress: Progress | None = None) -> list[Result]:
        if not requests:
            return []
        live = set(self.live())
        size = len(requests) if len(live) == 1 else max(self.batch_size, -(-len(requests) // (2 * len(live))))
        queue = deque(_Batch(i, requests[i:i + size]) for i in range(0, len(requests), size))
        batches = list(queue)
        cond = threading.Condition()
        errors: list[BaseException] = []

        def finish(b: _Batch, results: list[Result]) -> None:
            b.results = results
            if progress:
                progress(len(results))
            cond.notify_all()

        def serve(i: int) -> None:
            while True:
                with cond:
                    while not queue and not errors and any(b.results is None for b in batches):
                        cond.wait()
                    if not queue or errors:
                        return
                    b = queue.popleft()
                    b.tried.add(i)
                try:
                    results = self.servers[i].generate(b.requests)
                except BaseException as e:  # EndpointRefused and bugs: every server stops
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
                    if not live:  # its own servers are all down: the others that are up take over
                        now = time.monotonic()
                        for j in [j for j in range(len(self.servers)) if now - self.down.get(j, -1e18) >= self.cooldown_s]:
                            live.add(j)
                            threading.Thread(target=serve, args=(j,), daemon=True).start()
                    if live - b.tried:
                        queue.appendleft(b)  # another server takes it
                        cond.notify_all()
                    else:
                        finish(b, results)  # every server failed it: kept as retryable rows
                    if not live:  # nobody left to take the rest: they fail here, as with one server
                        while queue:
                            rest = queue.popleft()
                            finish(rest, [Result(error=f"every server of {self.label} is down", retryable=True)
                                          for _ in rest.requests])
                    return

        for i in sorted(live):
            threading.Thread(target=serve, args=(i,), daemon=True).start()
        with cond:
            while not errors and any(b.results is None for b in batches):
                cond.wait()
        if errors:
            raise errors[0]
        return [r for b in batches for r in b.results]  # type: ignore[union-attr]

    def close(self) -> None:
        for s in self.servers:
            s.close()
