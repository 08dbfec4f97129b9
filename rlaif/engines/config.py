"""The engine blocks a recipe writes, apart from the engines that read them.

    Endpoint   a generator's or judge's `endpoint:` block: an OpenAI-compatible server, its key
               variable, limits, and how it is asked (live, balanced over several servers, or the
               Batch API)
    Prices     what a hosted model costs, for the dry run

Recipes, judge specs, the pool and the flows import these models without importing any engine
(engines/openai_endpoint.py and engines/providers.py both read them; neither is imported here).
"""

from __future__ import annotations

import ipaddress
import os
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field

from rlaif.core.errors import ConfigError


class Prices(BaseModel):
    """What a hosted model costs, in dollars per million tokens (for `rlaif run --dry-run`)."""

    model_config = ConfigDict(extra="forbid")

    input: float = Field(ge=0)
    output: float = Field(ge=0)
    batch_discount: float = Field(0.5, gt=0, le=1)  # the Batch API's price as a share (OpenAI: half)


class Endpoint(BaseModel):
    """A generator's or judge's `endpoint:` block in a recipe."""

    model_config = ConfigDict(extra="forbid")

    base_url: str  # e.g. http://127.0.0.1:8000/v1 or https://api.openai.com/v1
    base_urls: list[str] = Field(default_factory=list)  # more servers of the same model: balanced (engines/balanced.py)
    api_key_env: str | None = None  # name of the environment variable holding the key
    provider: Literal["auto", "vllm", "openai", "other"] = "auto"  # auto: ask GET /models once
    max_concurrency: int = Field(8, ge=1)
    max_retries: int = Field(4, ge=0)
    timeout_s: float = Field(120.0, gt=0)
    requests_per_minute: int | None = Field(None, ge=1)  # the account's limits, if known
    tokens_per_minute: int | None = Field(None, ge=1)
    reasoning: bool | None = None  # None: o-series and gpt-5 models on the OpenAI API
    reasoning_effort: Literal["minimal", "low", "medium", "high"] | None = None
    reasoning_tokens: int = Field(8192, ge=0)  # room for hidden reasoning, on top of max_tokens
    batch: bool = False  # send a stage's requests through the Batch API (half price, within 24h)
    batch_poll_s: float = Field(30.0, gt=0)
    batch_window: int = Field(20_000, ge=1)  # requests per batch call: several prompt chunks at once
    prices: Prices | None = None

    def api_key(self) -> str:
        if not self.api_key_env:
            return "EMPTY"  # vLLM's server accepts any key unless started with --api-key
        key = os.environ.get(self.api_key_env)
        if not key:
            raise ConfigError(f"environment variable {self.api_key_env} (the endpoint's api_key_env for "
                              f"{self.base_url}) is not set")
        return key

    @property
    def hosted(self) -> bool:
        """A hosted API rather than a server of one's own: provider openai/other, or `auto` with a
        public host (not localhost, a private address, or a bare cluster-internal name)."""
        if self.provider != "auto":
            return self.provider != "vllm"
        host = urlsplit(self.base_url).hostname or ""
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return "." in host and not host.endswith((".local", ".internal", ".svc", ".localhost"))
        return not (ip.is_private or ip.is_loopback or ip.is_link_local)
