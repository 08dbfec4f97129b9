"""rlaif-pipeline: RLAIF / distilled-DPO preference data with vLLM, an LLM judge, TRL and Prefect.

The package's rooms, and which way they may import (each imports only those to its right):

    cli -> flows -> rehearsal -> recipe -> evaluation -> training -> preferences -> judges -> generation
        -> runners -> engines -> prompts -> core

    core         records every stage shares and the run store (shards, manifests, locks)
    prompts      prompt sets (loading, chunking, hygiene) and data: versioned templates, bundled sets
    engines      one interface to text generation: vLLM offline, OpenAI-compatible endpoints
    runners      where stages run: the run context, the in-process and Ray executors, Prefect's server
    generation   the ensemble stage
    judges       one module per judge kind, the judge stage, scores, agreement
    preferences  binarization, dataset rows, versions, card and plots, judge bias, the Hub
    training     dSFT and dDPO with TRL
    evaluation   judged win rate, MT-Bench
    recipe       the recipe model, the preflight, the dry run
    rehearsal    tiny stand-ins under real hub ids, the strict local OpenAI server, CPU overrides
    flows        orchestration: every stage as one step, one driver, the Prefect flows
    cli          the command line and its console

docs/architecture.md draws them and walks one stage through.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("rlaif-pipeline")  # one version number: pyproject.toml's
except PackageNotFoundError:  # a source tree that is not installed
    __version__ = "0+unknown"
