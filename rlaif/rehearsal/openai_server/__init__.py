"""The strict local stand-in for the hosted OpenAI API (see server.py)."""

from rlaif.rehearsal.openai_server.server import *  # noqa: F401,F403
from rlaif.rehearsal.openai_server.server import (  # noqa: F401
    COMPLETION_MODELS, OpenAIServer, check_strict_schema, default_responder, main, mask_key, validate_batch_file)
