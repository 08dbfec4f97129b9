"""One OpenAI-compatible server (`endpoint:`): vLLM's own server, the OpenAI API, or another."""

from __future__ import annotations

from rlaif.engines.backend import Backend


def endpoint_checks(specs) -> list:
    """One GET /models per (server, key variable), for every model asked of it (preflight)."""
    from rlaif.engines.openai_endpoint import check_endpoint

    servers: dict[tuple, tuple] = {}
    for s in specs:
        _, models = servers.setdefault((s.endpoint.base_url, s.endpoint.api_key_env), (s.endpoint, []))
        models.append(s.model)
    return [lambda e=e, models=models: check_endpoint(e, sorted(set(models))) for e, models in servers.values()]


class OpenAIEndpoint(Backend):
    name = "openai"

    def open(self, spec, run_dir, seed, replica):
        from rlaif.engines.openai_endpoint import EndpointEngine

        return EndpointEngine(spec.endpoint, spec.model)

    def checks(self, specs):
        return endpoint_checks(specs)
