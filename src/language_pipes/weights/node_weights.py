"""One node's weights from peers: it fetches what its placement needs and serves what it hosts.

:class:`NodeWeights` is what :class:`~language_pipes.node.Node` holds of this package: the
fetcher, the model folders (:class:`~language_pipes.weights.provider.ModelWeights`) and,
unless ``weights_serve_bytes_per_s`` is 0, the server. Every placement goes through it the
same way, at start-up and later (a layer model loaded while running, say into a gap):
:meth:`planning_source` opens a folder to plan with, :meth:`hosting_source` makes the folder
hold the tensors of the modules placement chose, fetching from peers what is missing, and
:meth:`load_end_model` / :meth:`load_layers` load them from it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import torch

from language_pipes.config import EndModelConfig, LayerModelConfig, ModelSourceName
from language_pipes.models.end_model import EndModel
from language_pipes.models.partial import ModelSource
from language_pipes.models.quantization import WeightFormat, weight_format
from language_pipes.models.segment import LayerSegment
from language_pipes.models.store import ModelStore
from language_pipes.network.peer_network import PeerNetwork
from language_pipes.weights.fetch import WeightFetcher
from language_pipes.weights.progress import FetchProgress
from language_pipes.weights.provider import ModelWeights, tensors_for_modules
from language_pipes.weights.serve import WeightServer

log = logging.getLogger(__name__)

ModelEntry = EndModelConfig | LayerModelConfig


class NodeWeights:
    """The fetching and serving side of one node's model weights."""

    def __init__(
        self,
        network: PeerNetwork,
        store: ModelStore,
        hosted: Callable[[], set[str]],
        *,
        model_source: ModelSourceName,
        serve_bytes_per_s: int,
        serve_concurrency: int,
        batch_invariant: bool = False,
    ) -> None:
        self.batch_invariant = batch_invariant
        self.fetcher = WeightFetcher(network)
        self.folders = ModelWeights(store, self.fetcher)
        self.model_source = model_source
        self.server = (
            WeightServer(network, store, hosted, bytes_per_s=serve_bytes_per_s, concurrency=serve_concurrency)
            if serve_bytes_per_s > 0
            else None
        )

    async def planning_source(self, entry: ModelEntry) -> ModelSource:
        """A folder with the config and every safetensors header of ``entry``'s model, opened."""
        source = entry.model_source or self.model_source
        folder = await self.folders.planning_folder(entry.model_id, source, entry.manifest_sha256)
        return await asyncio.to_thread(ModelSource.open, folder)

    async def hosting_source(
        self, entry: ModelEntry, planning: ModelSource, modules: list[str]
    ) -> ModelSource:
        """The model's installed folder holding every tensor of ``modules`` (fetched if need be), opened."""
        tensors = tensors_for_modules(planning.reader, modules)
        folder = await self.folders.ensure_tensors(
            entry.model_id, planning.folder, tensors, entry.manifest_sha256
        )
        if folder == planning.folder:
            return planning
        return await asyncio.to_thread(ModelSource.open, folder)

    async def load_end_model(self, entry: EndModelConfig, source: ModelSource) -> EndModel:
        """The end model of ``entry``, loaded (in a thread) from ``source``."""
        log.info(
            "loading end model %s (%d first and %d last local layers) on %s",
            entry.model_id, entry.num_local_layers, entry.num_local_last_layers, entry.device,
        )  # fmt: skip
        weights = weight_format(entry.data_type, entry.device)
        return await asyncio.to_thread(
            EndModel,
            entry.model_id,
            source.folder,
            num_local_layers=entry.num_local_layers,
            num_local_last_layers=entry.num_local_last_layers,
            dtype=weights.activation_dtype,
            device=entry.device,
            source=source,
            batch_invariant=self.batch_invariant,
            weights=weights,
        )

    async def load_layers(
        self, entry: LayerModelConfig, source: ModelSource, weights: WeightFormat, start: int, end: int
    ) -> LayerSegment:
        """Layers ``[start, end)`` of ``entry``'s model, loaded (in a thread) from ``source``."""
        log.info("loading layers %d-%d of %s on %s", start, end - 1, entry.model_id, entry.device)
        return await asyncio.to_thread(
            LayerSegment,
            source.with_weights(weights),
            start,
            end,
            weights.activation_dtype,
            torch.device(entry.device),
            self.batch_invariant,
        )

    def start_serving(self, model_ids: list[str]) -> asyncio.Task[None] | None:
        """Build the manifests of the hosted models in the background, before any peer asks."""
        if self.server is None:
            return None
        return asyncio.create_task(self.server.prepare(model_ids))

    def fetches(self) -> list[FetchProgress]:
        """Every model this node fetched (or is fetching) from peers."""
        return list(self.fetcher.progress.values())
