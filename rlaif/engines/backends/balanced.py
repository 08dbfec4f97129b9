"""Several servers of one model (`endpoint.base_urls`), each request to one that is up."""

from __future__ import annotations

from rlaif.engines.backend import Backend
from rlaif.engines.backends.openai import endpoint_checks


class Balanced(Backend):
    name = "balanced"

    def open(self, spec, run_dir, seed, replica):
        from rlaif.engines.balanced import BalancedEngine

        if replica.count == 1:
            return BalancedEngine(spec.endpoint, spec.model)
        # replica i of R keeps servers i, i+R, ... busy; the others are its fallback
        n = 1 + len(spec.endpoint.base_urls)
        own = list(range(replica.index % n, n, replica.count)) if replica.count < n else [replica.index % n]
        return BalancedEngine(spec.endpoint, spec.model, own=own)

    def checks(self, specs):
        return endpoint_checks(specs)

    def auto_replicas(self, spec):
        return 1 + len(spec.endpoint.base_urls)  # one per server
