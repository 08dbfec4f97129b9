"""A backend in one file: chat requests to an OpenAI-compatible server (`endpoint:`), one at a time,
through the standard library's urllib instead of the openai client.

Defining the class registers it; a recipe picks it with `engine: {backend: urllib}` beside its
`endpoint:`. It says what the preflight checks (the server lists the model, with the key) and where
its requests go for the dry run; everything else (the pool, the stages) runs it unchanged.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from rlaif.core.errors import ConfigError, RlaifError
from rlaif.engines import providers
from rlaif.engines.backend import Backend
from rlaif.engines.base import Result
from rlaif.engines.openai_endpoint import result_of


def call(endpoint, method: str, path: str, body: dict | None = None) -> dict:
    request = urllib.request.Request(endpoint.base_url.rstrip("/") + path, method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Authorization": f"Bearer {endpoint.api_key()}",
                                              "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=endpoint.timeout_s) as answer:
        return json.loads(answer.read())


class UrllibEngine:
    def __init__(self, endpoint, model: str):
        self.endpoint, self.model = endpoint, model
        self.label = f"{model} @ {endpoint.base_url} (urllib)"
        provider = endpoint.provider if endpoint.provider != "auto" else "other"
        self.shape = providers.shape_for(provider, endpoint, model)

    def generate(self, requests, progress=None):
        out = []
        for r in requests:
            try:
                out.append(result_of(call(self.endpoint, "POST", providers.route(r),
                                          providers.body(r, self.model, self.shape))))
            except urllib.error.HTTPError as e:
                if e.code < 500 and e.code != 429:  # no retry fixes it: the stage stops
                    raise RlaifError(f"{self.label}: HTTP {e.code}: {e.read().decode()[:200]}") from None
                out.append(Result(error=f"HTTP {e.code}", retryable=True))
            if progress:
                progress(1)
        return out

    def close(self) -> None:
        pass


def check(spec) -> None:
    """The server answers GET /models with the key and lists the model."""
    if spec.endpoint is None:
        raise ConfigError(f"{spec.model}: the urllib backend needs an endpoint: block")
    try:
        served = {m["id"] for m in call(spec.endpoint, "GET", "/models")["data"]}
    except (urllib.error.URLError, OSError) as e:
        raise ConfigError(f"{spec.endpoint.base_url} (urllib): {e}") from None
    if spec.model not in served:
        raise ConfigError(f"{spec.endpoint.base_url} (urllib) does not serve model {spec.model!r}")


class Urllib(Backend):
    name = "urllib"

    def open(self, spec, run_dir, seed, replica):
        return UrllibEngine(spec.endpoint, spec.model)

    def checks(self, specs):
        return [lambda s=s: check(s) for s in specs]

    def where(self, spec):
        return f"{spec.endpoint.base_url} (urllib)"
