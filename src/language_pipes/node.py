"""One Language Pipes node: config -> models -> network -> pipes -> API.

:class:`Node` owns every part's lifetime. ``run_node`` is the headless
``language-pipes -c FILE run`` entry point: it starts a node and blocks until
SIGINT or SIGTERM.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass, field

import torch

from language_pipes.api.app import create_app
from language_pipes.api.server import ApiServer
from language_pipes.config import EndModelConfig, LayerModelConfig, NodeConfig
from language_pipes.engine.generator import ModelGenerator
from language_pipes.engine.scheduler import Scheduler
from language_pipes.engine.types import ModelId, ModelUnavailableError, ModelUnknownError
from language_pipes.models.end_model import EndModel
from language_pipes.models.partial import DTYPES, ModelSource
from language_pipes.models.segment import LayerSegment
from language_pipes.models.store import ModelStore
from language_pipes.pipes.placement import LayerSpan, choose_span, layers_that_fit
from language_pipes.pipes.route import Route, chains

log = logging.getLogger("language_pipes.node")

GIGABYTE = 1_000_000_000


@dataclass
class HostedModel:
    """Everything this node holds of one model."""

    model_id: ModelId
    source: ModelSource
    end_model: EndModel | None = None
    segments: list[LayerSegment] = field(default_factory=list)
    scheduler: Scheduler | None = None
    generator: ModelGenerator | None = None


class Node:
    """Wires one node from its configuration and owns the lifetimes of its parts."""

    def __init__(self, config: NodeConfig, store: ModelStore | None = None) -> None:
        self.config = config
        self.store = store or ModelStore()
        self.models: dict[ModelId, HostedModel] = {}
        self._routes: dict[ModelId, Route] = {}
        self.api_server: ApiServer | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        torch.set_num_threads(self.config.torch_threads)
        await asyncio.to_thread(self._load_models)
        for hosted in self.models.values():
            if hosted.end_model is not None:
                hosted.scheduler = Scheduler(hosted.end_model, lambda m=hosted.model_id: self.route_for(m))
                hosted.scheduler.start()
                hosted.generator = ModelGenerator(hosted.end_model, hosted.scheduler)
        if self.config.job_port is not None:
            app = create_app(self, api_keys=list(self.config.api_keys), max_api_jobs=self.config.max_api_jobs)
            self.api_server = ApiServer(app, host="0.0.0.0", port=self.config.job_port)
            await self.api_server.start()
            log.info("OpenAI-compatible API on http://127.0.0.1:%d/v1", self.config.job_port)
        for model_id in self.servable_models():
            log.info("serving %s", model_id)

    async def stop(self) -> None:
        if self.api_server is not None:
            await self.api_server.stop()
        for hosted in self.models.values():
            if hosted.scheduler is not None:
                hosted.scheduler.stop()

    # -- models ----------------------------------------------------------------------------

    def _source(self, model_id: str) -> HostedModel:
        key = ModelId(model_id)
        if key not in self.models:
            folder = self.store.ensure(model_id)
            self.models[key] = HostedModel(key, ModelSource.open(folder))
        return self.models[key]

    def _load_models(self) -> None:
        for entry in self.config.end_models:
            self._load_end_model(entry)
        for entry in self.config.layer_models:
            self._load_layer_model(entry)

    def _load_end_model(self, entry: EndModelConfig) -> None:
        hosted = self._source(entry.model_id)
        log.info(
            "loading end model %s (%d local layers) on %s",
            entry.model_id,
            entry.num_local_layers,
            entry.device,
        )
        hosted.end_model = EndModel(
            entry.model_id,
            hosted.source.folder,
            num_local_layers=entry.num_local_layers,
            dtype=torch.bfloat16 if entry.device == "cpu" else torch.float16,
            device=entry.device,
            source=hosted.source,
        )

    def _load_layer_model(self, entry: LayerModelConfig) -> None:
        hosted = self._source(entry.model_id)
        dtype = DTYPES[entry.data_type]
        capacity = layers_that_fit(
            entry.memory * GIGABYTE,
            hosted.source.layer_nbytes(dtype),
            hosted.source.kv_bytes_per_token(dtype),
        )
        span = choose_span(
            hosted.source.num_layers, self._first_shared_layer(hosted), self._covered(hosted), capacity
        )
        if span is None:
            log.warning(
                "layer model %s: nothing to host (budget %.2f GB fits %d layers)",
                entry.model_id,
                entry.memory,
                capacity,
            )
            return
        log.info(
            "loading layers %d-%d of %s on %s (%s)",
            span.start,
            span.end - 1,
            entry.model_id,
            entry.device,
            entry.data_type,
        )
        hosted.segments.append(
            LayerSegment(hosted.source, span.start, span.end, dtype, torch.device(entry.device))
        )

    def _first_shared_layer(self, hosted: HostedModel) -> int:
        return hosted.end_model.local_layers.end if hosted.end_model is not None else 1

    def _covered(self, hosted: HostedModel) -> list[LayerSpan]:
        return [LayerSpan(s.start, s.end) for s in hosted.segments]

    # -- routing ---------------------------------------------------------------------------

    def route_for(self, model_id: ModelId) -> Route | None:
        """A complete chain of segments after the end model's local layers, or None."""
        hosted = self.models.get(model_id)
        if hosted is None or hosted.end_model is None:
            return None
        cached = self._routes.get(model_id)
        if cached is not None:
            return cached
        segments = sorted(hosted.segments, key=lambda s: s.start)
        if not chains(hosted.end_model.local_layers.end, hosted.source.num_layers, segments):
            return None
        route = self._routes[model_id] = Route(segments, name="local")
        return route

    # -- ModelCatalog (what the API sees) ---------------------------------------------------

    def servable_models(self) -> list[ModelId]:
        return [m for m, hosted in self.models.items() if hosted.generator is not None and self.route_for(m)]

    def generator(self, model_id: str) -> ModelGenerator:
        hosted = self.models.get(ModelId(model_id))
        if hosted is None or hosted.generator is None:
            raise ModelUnknownError(model_id)
        if self.route_for(hosted.model_id) is None:
            raise ModelUnavailableError(model_id)
        return hosted.generator


def run_node(config: NodeConfig) -> int:
    """Run a node until SIGINT/SIGTERM; returns the process exit code."""
    return asyncio.run(_serve(config))


async def _serve(config: NodeConfig) -> int:
    node = Node(config)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    try:
        await node.start()
    except Exception as error:  # noqa: BLE001 - a start-up failure is reported in one line, not a traceback
        log.error("node %s failed to start: %s", config.node_id, error)
        log.debug("start-up failure", exc_info=True)
        await node.stop()
        return 1
    log.info("node %s is running; press Ctrl-C to stop", config.node_id)
    await stopping.wait()
    log.info("stopping node %s", config.node_id)
    await node.stop()
    return 0
