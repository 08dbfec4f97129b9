"""The OpenAI Batch API (`endpoint.batch: true`): half price, answered within 24 hours; the batch
ids are kept in the run directory so a killed run picks its batches up again."""

from __future__ import annotations

from pathlib import Path

from rlaif.engines.backend import Backend
from rlaif.engines.backends.openai import endpoint_checks


class Batch(Backend):
    name = "batch"

    def open(self, spec, run_dir, seed, replica):
        from rlaif.engines.batch_api import BatchEngine
        from rlaif.engines.models import rlaif_home

        return BatchEngine(spec.endpoint, spec.model, Path(run_dir or rlaif_home()) / "batches")

    def checks(self, specs):
        return endpoint_checks(specs)

    def where(self, spec):
        return spec.endpoint.base_url + " (batch)"

    def cost(self, spec, input_tokens, output_tokens):
        full = super().cost(spec, input_tokens, output_tokens)
        return None if full is None else full * spec.endpoint.prices.batch_discount
