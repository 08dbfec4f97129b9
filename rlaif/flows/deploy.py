"""Scheduled refreshes on a Prefect server: `rlaif deploy` registers, `rlaif serve` executes.

    prefect server start                                    # a server, e.g. on 127.0.0.1:4200
    export PREFECT_API_URL=http://127.0.0.1:4200/api
    rlaif deploy recipes/quickstart.yaml --cron "0 3 * * *"  # the deployment, with its schedule
    rlaif serve                                             # runs its flow runs as they come due

`deploy` creates (or updates) a deployment of `refresh_flow` named after the recipe, whose
parameters are the recipe's path and the run directory, both absolute, and whose schedule is the
cron string. No work pool is needed: `serve` reads this project's deployments back from the
server and serves them in one process (Prefect's Runner), which polls for due runs and runs each
in a subprocess. Stopping `serve` leaves the schedules active, so runs queue until it is back.
"""

from __future__ import annotations

from pathlib import Path
from uuid import UUID

from prefect.types.entrypoint import EntrypointType

from rlaif.core.errors import RlaifError
from rlaif.core.store import default_run_dir
from rlaif.recipe.spec import RecipeError, load_recipe
from rlaif.flows.refresh import refresh_flow

FLOW = "rlaif-refresh"
# by module path, not file path: the deployment runs wherever the package is importable
ENTRY = EntrypointType.MODULE_PATH


def deploy(recipe_path: str | Path, cron: str, name: str | None = None, out: str | Path | None = None,
           overrides: list[str] | None = None) -> UUID:
    """Register the refresh deployment with the server in PREFECT_API_URL; returns its id."""
    recipe = load_recipe(recipe_path, overrides)  # a bad recipe fails here, not at 3 a.m.
    if not recipe.makes_data:
        raise RecipeError(f"{recipe_path}: no generators: a refresh makes data, and this recipe only trains")
    if recipe.rounds.on and not recipe.rounds.scheduled:
        from rlaif.flows.rounds import SCHEDULED_ONLY

        raise RecipeError(f"{recipe_path}: {SCHEDULED_ONLY}")
    params = {"recipe_path": str(Path(recipe_path).resolve()),
              "out": str(Path(out or default_run_dir(recipe.name)).resolve()), "overrides": list(overrides or [])}
    deployment = refresh_flow.to_deployment(
        name=name or recipe.name, cron=cron, parameters=params, entrypoint_type=ENTRY,
        description=f"Refresh the {recipe.name} preference dataset with the prompts not seen before.")
    return deployment.apply()


def served_deployments(names: list[str] | None = None) -> list:
    """This project's deployments on the server, as runner deployments with their schedules."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    with get_client(sync_client=True) as client:
        found = client.read_deployments(flow_filter=FlowFilter(name=FlowFilterName(any_=[FLOW])))
    found = [d for d in found if not names or d.name in names]
    missing = sorted(set(names or []) - {d.name for d in found})
    if missing:
        raise RlaifError(f"no {FLOW} deployment named {missing} on the server; create it with `rlaif deploy`")
    return [refresh_flow.to_deployment(
        name=d.name, parameters=d.parameters, paused=d.paused, description=d.description, entrypoint_type=ENTRY,
        schedules=[{"schedule": s.schedule, "active": s.active} for s in d.schedules]) for d in found]


def serve(names: list[str] | None = None, limit: int | None = 1) -> None:
    """Serve the deployments until interrupted; one flow run at a time by default (engines are big)."""
    from prefect import serve as prefect_serve

    deployments = served_deployments(names)
    if not deployments:
        raise RlaifError(f"no {FLOW} deployments on the server; create one with `rlaif deploy RECIPE --cron ...`")
    prefect_serve(*deployments, pause_on_shutdown=False, limit=limit)
