"""Where a node's model folders come from: the store, the hub (or the embedded model), or peers.

``model_source`` decides, per node or per model: ``"hub"`` downloads (or converts the
embedded default model) as before; ``"peers"`` fetches from peers on the keyed network
only; ``"auto"`` (the default) tries the hub first and asks peers when that fails.

A node first needs a folder to *plan* with (config, tokenizer, safetensors headers:
enough to count layers and size them), then the tensors of what it will host. From
peers, both land in a staging folder ``.peers-org--name`` that is renamed into place
once its first set of tensors is complete; a later need (placement gives the node more
layers) is fetched into the installed folder, which lists what it holds.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from language_pipes.config import ModelSourceName
from language_pipes.models.store import PEERS_PREFIX, ModelStore, ModelStoreError, is_complete_model_folder
from language_pipes.models.weights import WeightReader
from language_pipes.weights.fetch import WeightFetcher
from language_pipes.weights.journal import held_tensors, stored_manifest

log = logging.getLogger(__name__)


def tensors_for_modules(reader: WeightReader, module_paths: Iterable[str]) -> set[str]:
    """Checkpoint names of every tensor the modules at ``module_paths`` load (``model.layers.3``, ...)."""
    names: set[str] = set()
    for path in module_paths:
        names.update(reader.stored_names_with_prefix(f"{path}."))
    return names


def end_model_modules(num_layers: int, num_local_layers: int, num_local_last_layers: int = 0) -> list[str]:
    """Modules an end model loads: embedding, final norm, head (tied or not), its first and last layers."""
    local = min(num_local_layers, num_layers)
    last = range(max(local, num_layers - num_local_last_layers), num_layers)
    layers = [*range(local), *last]
    return ["model.embed_tokens", "model.norm", "lm_head", *(f"model.layers.{i}" for i in layers)]


def layer_modules(start: int, end: int) -> list[str]:
    return [f"model.layers.{i}" for i in range(start, end)]


class ModelWeights:
    """Prepares model folders for one node, from whichever source its configuration allows."""

    def __init__(self, store: ModelStore, fetcher: WeightFetcher) -> None:
        self.store = store
        self.fetcher = fetcher

    def staging_path(self, model_id: str) -> Path:
        return self.store.root / f"{PEERS_PREFIX}{self.store.local_path(model_id).name}"

    async def planning_folder(
        self, model_id: str, source: ModelSourceName, pinned_sha256: str | None = None
    ) -> Path:
        """A folder with config, tokenizer and every safetensors header of ``model_id``."""
        installed = self.store.local_path(model_id)
        if is_complete_model_folder(installed):
            return installed
        if source in ("hub", "auto"):
            try:
                return await asyncio.to_thread(self.store.ensure, model_id)
            except ModelStoreError as error:
                if source == "hub":
                    raise
                log.warning("%s; asking peers on the network instead", error)
        manifest, holders = await self.fetcher.manifest(model_id, pinned_sha256)
        staging = self.staging_path(model_id)
        stale = stored_manifest(staging) if staging.exists() else None
        if stale is not None and stale.digest() != manifest.digest():
            log.info("dropping a partial fetch of %s made against another manifest", model_id)
            await asyncio.to_thread(shutil.rmtree, staging)
        await self.fetcher.fetch(staging, manifest, holders, tensors=[])
        return staging

    async def ensure_tensors(
        self, model_id: str, folder: Path, tensors: set[str], pinned_sha256: str | None = None
    ) -> Path:
        """The installed folder of ``model_id`` holding ``tensors``; fetches what is missing from peers."""
        held = held_tensors(folder)
        installed = self.store.local_path(model_id)
        if held is None and folder == installed:
            return folder  # a complete folder from the hub or the embedded model
        missing = tensors - (held or set())
        if missing:
            manifest = stored_manifest(folder)
            if manifest is None:
                raise ModelStoreError(model_id, f"{folder} lost its manifest; delete it and start again")
            trusted, holders = await self.fetcher.manifest(model_id, pinned_sha256 or manifest.digest())
            log.info("fetching %d tensors of %s from %d peers", len(missing), model_id, len(holders))
            await self.fetcher.fetch(folder, trusted, holders, tensors=(held or set()) | tensors)
        if folder != installed:
            if installed.exists():  # an incomplete folder from a manual copy: the fetched one replaces it
                await asyncio.to_thread(shutil.rmtree, installed)
            os.replace(folder, installed)
            log.info("installed %s at %s (the tensors this node hosts, from peers)", model_id, installed)
        return installed
