"""Checking a manifest from peers against the hashes the hub publishes, when the hub answers.

The hub lists every file of a repository with its size, and each LFS file (the
safetensors weights) with the SHA-256 of its bytes (``list_repo_tree``). A manifest
agrees with the hub when each of its files the hub lists has the hub's size and,
for LFS files, the hub's SHA-256, and none of its safetensors files is missing from
the hub. The trust order, strongest first:

1. a pinned ``manifest_sha256``: only that manifest is used, the hub is not asked;
2. the hub's hashes, when the hub can be asked: only manifests that agree are used;
3. the keyed network: the manifest most peers serve (a tie is refused).

The hub vouches for whole files; a node that fetches only some tensors of a file
checks each piece against the manifest's block hashes, which the hub cannot see.
The embedded default model is converted on each node from a GGUF file, not taken
from the hub, so its manifest is never checked against the hub.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import httpx2
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

from language_pipes.models.embedded import DEFAULT_MODEL_ID
from language_pipes.models.store import hub_endpoint
from language_pipes.weights.manifest import Manifest

log = logging.getLogger(__name__)

# One try, briefly: huggingface_hub's own listing retries a refused connection for ~25 s,
# and a node asking peers has usually just found the hub unreachable.
HUB_TIMEOUT_S = 10.0
MAX_PAGES = 20


@dataclass(frozen=True)
class HubFile:
    size: int
    sha256: str | None  # LFS files only


HubFiles = dict[str, HubFile]


def hub_file_hashes(model_id: str) -> HubFiles | None:
    """Size and (LFS files) SHA-256 of every file of ``model_id`` on the hub; None if it cannot say."""
    if model_id == DEFAULT_MODEL_ID:
        return None  # converted on each node from the embedded GGUF: its bytes are not the hub's
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return None
    endpoint = hub_endpoint()
    try:
        return _listing(f"{endpoint}/api/models/{model_id}/tree/main")
    except (HfHubHTTPError, httpx2.HTTPError, OSError, ValueError, KeyError, TypeError) as error:
        # Unreachable, not on the hub (a private or local model) or a bad answer: the network decides.
        log.info("could not check %s against the hub at %s: %s", model_id, endpoint, error)
        return None


def _listing(url: str | None) -> HubFiles:
    """Every file the hub's recursive tree listing names, following its pages."""
    files: HubFiles = {}
    params: dict[str, str] | None = {"recursive": "true", "expand": "false"}
    for _ in range(MAX_PAGES):
        if url is None:
            return files
        response = get_session().get(url, params=params, headers=build_hf_headers(), timeout=HUB_TIMEOUT_S)
        hf_raise_for_status(response)
        for entry in response.json():
            if entry["type"] == "file":
                lfs = entry.get("lfs")
                files[entry["path"]] = HubFile(int(entry["size"]), str(lfs["oid"]) if lfs else None)
        url, params = response.links.get("next", {}).get("url"), None
    raise ValueError(f"the hub's listing runs past {MAX_PAGES} pages")


def disagreements(manifest: Manifest, hub: HubFiles) -> list[str]:
    """How ``manifest`` differs from the hub's files (empty: it agrees)."""
    problems = []
    for entry in manifest.files:
        published = hub.get(entry.name)
        if published is None:
            if entry.name.endswith(".safetensors"):
                problems.append(f"{entry.name} is not on the hub")
            continue
        if published.size != entry.size:
            problems.append(f"{entry.name} is {entry.size} bytes, the hub's {published.size}")
        elif published.sha256 is not None and published.sha256 != entry.sha256:
            problems.append(
                f"{entry.name} has SHA-256 {entry.sha256[:12]}…, the hub's {published.sha256[:12]}…"
            )
    return problems
