"""One Language Pipes node: config -> models -> network -> pipes -> API.

:class:`Node` owns every part's lifetime. ``run_node`` is the headless
``language-pipes -c FILE run`` entry point: it starts a node and blocks until
SIGINT or SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from dataclasses import dataclass, field

import torch

from language_pipes import metrics
from language_pipes.api.app import create_app
from language_pipes.api.server import ApiServer
from language_pipes.api.settings import ApiSettings
from language_pipes.config import EndModelConfig, LayerModelConfig, NodeConfig
from language_pipes.engine.generator import ModelGenerator
from language_pipes.engine.scheduler import Scheduler
from language_pipes.engine.speculation import SpeculationSettings
from language_pipes.engine.types import ModelUnavailableError, ModelUnknownError
from language_pipes.models.end_model import EndModel, preload_tokenizer
from language_pipes.models.partial import ModelSource
from language_pipes.models.quantization import weight_format
from language_pipes.models.segment import LayerSegment
from language_pipes.models.store import ModelStore
from language_pipes.network.identity import load_or_create_identity
from language_pipes.network.peer_network import PeerNetwork
from language_pipes.network.pins import known_nodes_file
from language_pipes.network.types import HostedSegment, NodeId
from language_pipes.node_metrics import model_states
from language_pipes.pipes.placement import KV_HEADROOM_TOKENS, choose_span, covered_spans, layers_that_fit
from language_pipes.pipes.remote import RemoteSegment
from language_pipes.pipes.route import LocalHop, Route, SegmentRunner
from language_pipes.pipes.route_table import RouteTable, plan_hops
from language_pipes.pipes.routing import Hop
from language_pipes.pipes.worker import LayerWorker
from language_pipes.vocabulary import ModelId
from language_pipes.weights.node_weights import NodeWeights
from language_pipes.weights.provider import end_model_modules, layer_modules

log = logging.getLogger("language_pipes.node")

GIGABYTE = 1_000_000_000
FAILURE_TIMEOUT_S = 3.0
BOOTSTRAP_SETTLE_S = 3.0
LOAD_REPORT_INTERVAL_S = 1.0
DRAIN_TIMEOUT_S = 30.0
# Layer nodes start pipes after the end model's local layers (num_local_layers defaults to 1).
DEFAULT_FIRST_SHARED_LAYER = 1


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
        self.routes = RouteTable(NodeId(config.node_id))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.network = PeerNetwork(
            load_or_create_identity(config.node_id),
            listen_host=config.listen_ip or config.network_ip,
            peer_port=config.peer_port,
            advertise_ip=config.network_ip,
            network_key=bytes.fromhex(config.network_key) if config.network_key else None,
            whitelist=config.whitelist_node_ids,
            bootstrap=[(node.address, node.port) for node in config.bootstrap_nodes],
            failure_timeout_s=FAILURE_TIMEOUT_S,
            lane_port=config.lane_port or 0,
            pins_file=known_nodes_file(config.node_id),
        )
        self.worker = LayerWorker(self.network, config.max_node_jobs)
        # Weights from peers: this node fetches what it lacks and serves what it hosts.
        self.weights = NodeWeights(
            self.network,
            self.store,
            lambda: {str(model_id) for model_id in self.models},
            model_source=config.model_source,
            serve_bytes_per_s=config.weights_serve_bytes_per_s,
            serve_concurrency=config.weights_serve_concurrency,
            batch_invariant=config.batch_invariant,
        )
        self.network.on_peer_lost(self._on_peer_lost)
        self.network.on_records_changed(lambda: self.routes.retire_stale(self.network.records()))
        self.api_server: ApiServer | None = None

    @property
    def node_id(self) -> NodeId:
        return NodeId(self.config.node_id)

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        torch.set_num_threads(self.config.torch_threads)
        for local in [e.model_id for e in self.config.end_models if self.store.is_installed(e.model_id)]:
            await asyncio.to_thread(preload_tokenizer, self.store.local_path(local))  # before any heartbeat
        await self.network.start()
        log.info("peer network on port %d as %s", self.config.peer_port, self.config.node_id)
        if self.config.bootstrap_nodes:
            await self._wait_for_peers()
        for end_entry in self.config.end_models:
            await self._load_end_model(end_entry)
        self._publish_record()
        for entry in self.config.layer_models:
            await self.load_layer_model(entry)
        self.worker.start()
        self._start_schedulers()
        self._tasks.append(asyncio.create_task(self._report_load()))
        if (preparing := self.weights.start_serving([str(m) for m in self.models])) is not None:
            self._tasks.append(preparing)
        if self.config.job_port is not None:
            app = create_app(
                self,
                api_keys=list(self.config.api_keys),
                max_api_jobs=self.config.max_api_jobs,
                settings=ApiSettings.from_config(self.config),
                node_state=lambda: model_states(list(self.models.values())),
            )
            self.api_server = ApiServer(app, host=self.config.api_ip, port=self.config.job_port)
            await self.api_server.start()
            log.info("OpenAI-compatible API on http://%s:%d/v1", self.config.api_ip, self.config.job_port)

    async def stop(self) -> None:
        """Leave gracefully: stop taking sequences, let origins move the ones held here, then exit."""
        await self._drain()
        for task in self._tasks:
            task.cancel()
        if self.api_server is not None:
            await self.api_server.stop()
        for hosted in self.models.values():
            if hosted.scheduler is not None:
                await asyncio.to_thread(hosted.scheduler.stop)
        await self.worker.stop()
        await self.network.stop()

    async def _drain(self) -> None:
        if self.worker.sequence_count == 0:
            return
        log.info("leaving: handing %d sequences back to their origins", self.worker.sequence_count)
        self.worker.draining = True
        self.network.set_local_record(segments=[])
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DRAIN_TIMEOUT_S
        while self.worker.sequence_count and loop.time() < deadline:
            await asyncio.sleep(0.1)

    async def _wait_for_peers(self) -> None:
        """Give bootstrap and gossip a moment so placement sees what the network already hosts."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + BOOTSTRAP_SETTLE_S
        while loop.time() < deadline and len(self.network.records()) < 2:
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)  # one more gossip round brings peers of peers

    def _start_schedulers(self) -> None:
        for hosted in self.models.values():
            if hosted.end_model is not None:
                hosted.scheduler = Scheduler(
                    hosted.end_model,
                    lambda m=hosted.model_id: self.route_for(m),
                    aligned_prefill=self.config.batch_invariant,
                    speculation=SpeculationSettings(
                        self.config.speculation, self.config.speculation_max_tokens
                    ),
                    remote_lanes=self.config.remote_lanes,
                )
                hosted.scheduler.on_speculation = metrics.record_speculation
                hosted.scheduler.start()
                hosted.generator = ModelGenerator(hosted.end_model, hosted.scheduler)

    # -- models ----------------------------------------------------------------------------

    async def _planning_source(self, entry: EndModelConfig | LayerModelConfig) -> ModelSource:
        """An opened model to plan with: the hosted one, else a folder with its config and headers."""
        hosted = self.models.get(ModelId(entry.model_id))
        return hosted.source if hosted is not None else await self.weights.planning_source(entry)

    async def _hosted_with(
        self, entry: EndModelConfig | LayerModelConfig, planning: ModelSource, modules: list[str]
    ) -> HostedModel:
        """The hosted model, its folder holding each tensor of ``modules`` (fetched from peers if need be)."""
        source = await self.weights.hosting_source(entry, planning, modules)
        key = ModelId(entry.model_id)
        if key not in self.models:
            self.models[key] = HostedModel(key, source)
        return self.models[key]

    async def _load_end_model(self, entry: EndModelConfig) -> None:
        planning = await self._planning_source(entry)
        modules = end_model_modules(planning.num_layers, entry.num_local_layers, entry.num_local_last_layers)
        hosted = await self._hosted_with(entry, planning, modules)
        hosted.end_model = await self.weights.load_end_model(entry, hosted.source)

    async def load_layer_model(self, entry: LayerModelConfig) -> None:
        """Place one layer model (at start-up or while running), fetch and load it, host and advertise it."""
        planning = await self._planning_source(entry)
        weights = weight_format(entry.data_type, entry.device)
        dtype, planned = weights.activation_dtype, planning.with_weights(weights)
        # Packed layer sizes for int8 / int4.
        capacity = layers_that_fit(
            entry.memory * GIGABYTE, planned.layer_nbytes(dtype), planning.kv_bytes_per_token(dtype)
        )
        end_model = self.models[ModelId(entry.model_id)].end_model if entry.model_id in self.models else None
        shared = end_model.shared_layers if end_model is not None else None
        first = shared.start if shared is not None else DEFAULT_FIRST_SHARED_LAYER
        last = shared.stop if shared is not None else planning.num_layers
        span = choose_span(last, first, covered_spans(self.network.records(), entry.model_id), capacity)
        if span is None:
            fits = f"{entry.memory:.2f} GB fits {capacity} layers"
            log.warning("layer model %s: nothing to host (%s)", entry.model_id, fits)
            return
        # Claimed before fetching or loading, so nodes placing at the same time pick other layers.
        claim = HostedSegment(entry.model_id, span.start, span.end, loaded=False, data_type=weights.name)
        self._publish_record(claiming=claim)
        hosted = await self._hosted_with(entry, planning, layer_modules(span.start, span.end))
        segment = await self.weights.load_layers(entry, hosted.source, weights, span.start, span.end)
        segment.kv_budget_bytes = KV_HEADROOM_TOKENS * hosted.source.kv_bytes_per_token(dtype) * len(span)
        hosted.segments.append(segment)
        self.worker.host(entry.model_id, segment)
        self._publish_record()

    async def unload_layer_model(self, model_id: str) -> None:
        """Stop hosting ``model_id``'s segments while running; origins move the sequences held on them."""
        hosted = self.models.get(ModelId(model_id))
        if hosted is None or not hosted.segments:
            return
        leaving, hosted.segments = hosted.segments, []
        self._publish_record()  # peers stop planning through these layers and retire their routes
        self.routes.retire_own_hops(ModelId(model_id))  # this node's own routes through them move too
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DRAIN_TIMEOUT_S
        while any(segment.sequence_count for segment in leaving) and loop.time() < deadline:
            await asyncio.sleep(0.1)
        remaining = [s for s in self.worker.segments.get(model_id, []) if s not in leaving]
        if remaining:
            self.worker.segments[model_id] = remaining
        else:
            self.worker.segments.pop(model_id, None)
        self.worker.forget_unhosted()
        if hosted.end_model is None:
            del self.models[hosted.model_id]
        self._publish_record()
        log.info("unloaded layers of %s", model_id)

    def _publish_record(self, claiming: HostedSegment | None = None) -> None:
        segments = [
            HostedSegment(hosted.model_id, segment.start, segment.end, True, segment.data_type)
            for hosted in self.models.values()
            for segment in hosted.segments
        ]
        # An end model's own last layers: placement leaves them to it, no other origin routes through them.
        segments += [
            HostedSegment(hosted.model_id, last.start, last.end, True, last.data_type, private=True)
            for hosted in self.models.values()
            if hosted.end_model is not None and (last := hosted.end_model.last_layers) is not None
        ]
        if claiming is not None:
            segments.append(claiming)
        end_models = [m for m, hosted in self.models.items() if hosted.end_model is not None]
        self.network.set_local_record(segments=segments, end_models=end_models, load=self._load())

    def _load(self) -> int:
        local = sum(h.scheduler.active_count for h in self.models.values() if h.scheduler is not None)
        return local + self.worker.sequence_count

    async def _report_load(self) -> None:
        reported = -1
        while True:
            await asyncio.sleep(LOAD_REPORT_INTERVAL_S)
            load = self._load()
            if load != reported:
                self.network.set_local_record(load=load)
                reported = load

    def _on_peer_lost(self, node_id: NodeId) -> None:
        log.warning("peer %s is gone; its segments leave every pipe", node_id)
        self.worker.forget_origin(node_id)

    # -- routing ---------------------------------------------------------------------------

    def _planned_hops(self, model_id: ModelId) -> tuple[HostedModel, tuple[Hop, ...]] | None:
        """Plan a complete chain of hops after the end model's local layers; builds and caches nothing."""
        hosted = self.models.get(model_id)
        if hosted is None or hosted.end_model is None:
            return None
        hops = plan_hops(
            model_id,
            self.network.records(),
            self.node_id,
            hosted.end_model.shared_layers.start,
            hosted.end_model.shared_layers.stop,
            [(segment.start, segment.end) for segment in hosted.segments],
            self.routes.open_by_node(),
        )
        return None if hops is None else (hosted, hops)

    def has_route(self, model_id: ModelId) -> bool:
        """Whether a complete pipe serves ``model_id`` right now (a question: no route is built)."""
        return self._planned_hops(model_id) is not None

    def route_for(self, model_id: ModelId) -> Route | None:
        """The route a new sequence of ``model_id`` takes (built and cached on first use), or None."""
        planned = self._planned_hops(model_id)
        if planned is None:
            return None
        hosted, hops = planned
        return self.routes.route(model_id, hops, lambda hop: self._runner(hosted, hop))

    def _runner(self, hosted: HostedModel, hop: Hop) -> SegmentRunner:
        if hop.node_id == self.node_id:
            segment = next(s for s in hosted.segments if s.start <= hop.start and hop.end <= s.end)
            return LocalHop(segment, hop.start, hop.end)
        assert self._loop is not None and hosted.end_model is not None
        return RemoteSegment(
            self.network,
            self._loop,
            NodeId(hop.node_id),
            hosted.model_id,
            hop.start,
            hop.end,
            hosted.end_model.dtype,
            on_other_machine=self._on_other_machine(NodeId(hop.node_id)),
            step_timeout_s=self.config.step_timeout_s,
            step_timeout_per_token_s=self.config.step_timeout_per_token_s,
        )

    def _on_other_machine(self, node_id: NodeId) -> bool:
        record = self.network.records().get(node_id)
        return record is None or record.address != self.config.network_ip

    # -- ModelCatalog (what the API sees) ---------------------------------------------------

    def servable_models(self) -> list[ModelId]:
        return [m for m, hosted in self.models.items() if hosted.generator is not None and self.has_route(m)]

    def generator(self, model_id: str) -> ModelGenerator:
        hosted = self.models.get(ModelId(model_id))
        if hosted is None or hosted.generator is None:
            raise ModelUnknownError(model_id)
        if not self.has_route(hosted.model_id):
            raise ModelUnavailableError(model_id)
        return hosted.generator


def run_node(config: NodeConfig) -> int:
    """Run a node until SIGINT/SIGTERM; returns the process exit code.

    Only the process's entry point calls this: once the node has stopped, the
    process exits.
    """
    code = asyncio.run(_serve(config))
    # Every part has stopped and the process exits next. Python's teardown would
    # now walk the ~half a million objects torch and transformers created with the
    # cyclic collector, seconds of CPU (tens on a loaded machine) between "stopped"
    # and the exit. Frozen objects are skipped; the OS frees their memory anyway.
    gc.freeze()
    return code


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
        with contextlib.suppress(Exception):  # best effort: the start failure is what the user must see
            await node.stop()
        return 1
    log.info("node %s is running; press Ctrl-C to stop", config.node_id)
    await stopping.wait()
    log.info("stopping node %s", config.node_id)
    await node.stop()
    return 0
