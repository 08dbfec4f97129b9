"""rlaif-pipeline: RLAIF / distilled-DPO preference data with vLLM, an LLM judge, TRL and Prefect.

The package's rooms, and which way they may import (each imports only those to its right):

    flows -> rehearsal -> training -> preferences -> judges -> generation -> engines -> prompts -> core

    core         records every stage shares and the run store (shards, manifests, locks)
    engines      one interface to text generation: vLLM offline, OpenAI-compatible endpoints
    generation   prompt sets and the ensemble stage
    judges       one module per judge kind, the judge stage, scores, agreement
    preferences  hygiene, binarization, dataset rows, versions, card and plots, the Hub
    training     dSFT and dDPO with TRL, evaluation
    rehearsal    tiny stand-ins under real hub ids, the strict local OpenAI server, CPU overrides
    flows        the recipe, Prefect flows (thin wrappers), the command line
    prompts      data: versioned templates and bundled prompt sets
"""

__version__ = "0.2.0"
