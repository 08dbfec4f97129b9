"""Pushing a dataset version to the Hugging Face Hub.

The token is read from HF_TOKEN and goes nowhere else: not into a file, a log or an error message.
"""

from __future__ import annotations

import os
from pathlib import Path

from rlaif.core.errors import RlaifError


class HubError(RlaifError):
    pass


def hub_token() -> str:
    token = os.environ.get("HF_TOKEN")
    if not token:
        raise HubError("set HF_TOKEN to a Hugging Face write token to push datasets to the Hub")
    return token


def check_push(repo_id: str) -> None:
    """Before any compute: HF_TOKEN is set and the Hub accepts it (HubError otherwise)."""
    from huggingface_hub import HfApi, constants

    token = hub_token()
    try:
        HfApi(token=token).whoami()
    except Exception as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        if status in (401, 403):
            raise HubError(f"pushing to {repo_id}: the Hub rejected HF_TOKEN (HTTP {status})") from None
        reason = str(e).replace(token, "***").splitlines()[0][:160] if str(e) else type(e).__name__
        raise HubError(f"pushing to {repo_id}: this machine cannot reach the Hugging Face Hub "
                       f"({constants.ENDPOINT}: {reason})") from None


def push_to_hub(version_dir: str | Path, repo_id: str, private: bool = True) -> str:
    """Upload a version (Parquet configs, card, plots, manifest) to a Hub dataset repo in one commit."""
    from huggingface_hub import HfApi

    version_dir = Path(version_dir)
    try:
        token = hub_token()
    except HubError as e:
        raise HubError(f"pushing {version_dir} to {repo_id}: {e}") from None
    try:
        api = HfApi(token=token)
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        api.upload_folder(folder_path=str(version_dir), repo_id=repo_id, repo_type="dataset",
                          allow_patterns=["README.md", "manifest.json", "prefs/*", "sft/*", "plots/*"],
                          commit_message=f"rlaif-pipeline dataset version {version_dir.name}")
    except Exception as e:  # the hub's message, never the token
        raise HubError(f"pushing {version_dir} to {repo_id} failed: {str(e).replace(token, '***')}") from None
    return f"https://huggingface.co/datasets/{repo_id}"
