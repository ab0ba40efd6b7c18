"""Start, stop and observe a :class:`~language_pipes.node.Node` from the terminal UI.

The UI drives the very ``Node`` the headless ``run`` uses. The only thing
added here is the split the Home tab needs: the network server (the node:
peers, models, pipes) and the job server (the OpenAI-compatible API) start and
stop separately. The node is started without ``job_port`` and the API is
served on the node's own :class:`ModelCatalog` by the same ``create_app`` and
``ApiServer`` the node uses, so API-key changes only restart the job server.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Literal

from language_pipes.config import LayerModelConfig, NodeConfig
from language_pipes.logs import apply_level, open_run_log
from language_pipes.node_status import ActiveJob, NodeStatus, active_jobs, node_status
from language_pipes.process_settings import prepare_native_threads

if TYPE_CHECKING:
    from pathlib import Path

    from language_pipes.api.server import ApiServer
    from language_pipes.node import Node

log = logging.getLogger("language_pipes.tui")

ServerState = Literal["stopped", "starting", "running", "stopping", "failed"]


class LayerChangeError(RuntimeError):
    """A layer model could not be loaded or unloaded now; the message says why in one line."""


class NodeControl:
    """Owns the UI's node and its job server; one of each at a time."""

    def __init__(self) -> None:
        self.node: Node | None = None
        self.api_server: ApiServer | None = None
        self.network_state: ServerState = "stopped"
        self.job_state: ServerState = "stopped"
        self.last_error: str | None = None
        self.log_file: Path | None = None
        self._file_handler: logging.Handler | None = None
        # The layer model being loaded or unloaded now (one change at a time), for the Models tab.
        self.layer_change: tuple[Literal["loading", "unloading"], str] | None = None

    # -- network server (the node) ----------------------------------------------------------

    async def start_network(self, config: NodeConfig) -> None:
        """Start the node (peers, models, pipes) without its API; failures end in state ``failed``."""
        if self.node is not None:
            raise RuntimeError("the network server is already running")
        self._log_to_file(config)
        prepare_native_threads(config.torch_threads)  # read once, when torch first loads
        self.network_state, self.last_error = "starting", None
        from language_pipes.node import Node  # torch loads here, not when the UI opens

        try:
            node = Node(config.model_copy(update={"job_port": None}))
            self.node = node
            await node.start()
        except Exception as error:  # noqa: BLE001 - any start failure is shown in the UI, not a crash
            log.error("the network server failed to start: %s", error)
            log.debug("start-up failure", exc_info=True)
            self.last_error = f"network server: {error}"
            await self._stop_node_quietly()
            self.network_state = "failed"
            return
        self.network_state = "running"
        log.info("network server of %s is running", config.node_id)

    async def stop_network(self) -> None:
        """Stop the job server (it needs the node) and then the node."""
        await self.stop_job_server()
        if self.node is None:
            return
        self.network_state = "stopping"
        await self._stop_node_quietly()
        self.network_state = "stopped"
        log.info("network server stopped")

    async def _stop_node_quietly(self) -> None:
        node, self.node = self.node, None
        if node is not None:
            try:
                await node.stop()
            except Exception as error:  # noqa: BLE001 - stopping is best effort; say what went wrong
                log.warning("stopping the node: %s", error)

    # -- job server (the API) ---------------------------------------------------------------

    async def start_job_server(self, config: NodeConfig) -> None:
        """Serve the API on ``config.job_port`` with ``config.api_keys``; needs the network server."""
        if self.node is None or self.network_state != "running":
            self.last_error = "job server: start the network server first"
            self.job_state = "failed"
            return
        if config.job_port is None:
            self.last_error = "job server: set a job port first"
            self.job_state = "failed"
            return
        if self.api_server is not None:
            await self.stop_job_server()
        from language_pipes.api.app import create_app
        from language_pipes.api.server import ApiServer
        from language_pipes.api.settings import ApiSettings

        self.job_state, self.last_error = "starting", None
        app = create_app(
            self.node,
            api_keys=list(config.api_keys),
            max_api_jobs=config.max_api_jobs,
            settings=ApiSettings.from_config(config),
        )
        server = ApiServer(app, host=config.api_ip, port=config.job_port)
        try:
            await server.start()
        except Exception as error:  # noqa: BLE001 - a taken port or similar: show it, keep the node up
            log.error("the job server failed to start: %s", error)
            self.last_error = f"job server: {error}"
            self.job_state = "failed"
            return
        self.api_server = server
        self.node.api_server = server  # so a node stop also closes it
        self.job_state = "running"
        log.info("job server: OpenAI-compatible API on http://127.0.0.1:%d/v1", server.port)

    async def stop_job_server(self) -> None:
        server, self.api_server = self.api_server, None
        if server is None:
            if self.job_state != "failed":
                self.job_state = "stopped"
            return
        self.job_state = "stopping"
        if self.node is not None and self.node.api_server is server:
            self.node.api_server = None
        await server.stop()
        self.job_state = "stopped"
        log.info("job server stopped")

    # -- layer models, while running ---------------------------------------------------------------

    def hosted_layers(self, model_id: str) -> list[tuple[int, int]]:
        """The layer ranges ``[start, end)`` of ``model_id`` this node hosts now."""
        status = self.status()
        model = None if status is None else status.model(model_id)
        return [] if model is None else list(model.segments)

    def weight_fetches(self) -> list[str]:
        """One line per model this node fetched (or is fetching) from peers: bytes, rate and sources."""
        if self.node is None:
            return []
        return [progress.line() for progress in self.node.weights.fetches()]

    async def load_layer_model(self, entry: LayerModelConfig) -> str:
        """Load one layer model into the running node now; returns what it now hosts, in one line."""
        node = self._node_for_layer_change()
        before = self.hosted_layers(entry.model_id)
        if before:  # a second load would add another copy of the layers, not this entry's
            raise LayerChangeError(
                f"this node already hosts {describe_layers(before)} of {entry.model_id}; unload them first"
            )
        self.layer_change = ("loading", entry.model_id)
        try:
            await node.load_layer_model(entry)
        except Exception as error:  # noqa: BLE001 - a failed load (download, memory) is shown; the node stays up
            log.error("loading layers of %s failed: %s", entry.model_id, error)
            log.debug("layer load failure", exc_info=True)
            raise LayerChangeError(f"loading {entry.model_id} failed: {error}") from error
        finally:
            self.layer_change = None
        added = self.hosted_layers(entry.model_id)
        if not added:
            raise LayerChangeError(
                f"nothing to load for {entry.model_id}: the network already hosts its layers "
                f"or {entry.memory:g} GB holds none (see the log)"
            )
        return f"Loaded {describe_layers(added)} of {entry.model_id}."

    async def unload_layer_model(self, model_id: str) -> str:
        """Stop hosting ``model_id``'s layers now; sequences on them move to other nodes first."""
        node = self._node_for_layer_change()
        hosted = self.hosted_layers(model_id)
        if not hosted:
            raise LayerChangeError(f"this node hosts no layers of {model_id}")
        self.layer_change = ("unloading", model_id)
        try:
            await node.unload_layer_model(model_id)
        except Exception as error:  # noqa: BLE001 - shown in the UI; the node keeps running
            log.error("unloading layers of %s failed: %s", model_id, error)
            log.debug("layer unload failure", exc_info=True)
            raise LayerChangeError(f"unloading {model_id} failed: {error}") from error
        finally:
            self.layer_change = None
        return f"Unloaded {describe_layers(hosted)} of {model_id}."

    def _node_for_layer_change(self) -> Node:
        if self.node is None or self.network_state != "running":
            raise LayerChangeError("start the network server first (it loads the configured layer models)")
        if self.layer_change is not None:
            doing, model_id = self.layer_change
            raise LayerChangeError(f"wait: {doing} {model_id} is still going on")
        return self.node

    async def shutdown(self) -> None:
        """Stop everything and close the log file (the UI is exiting)."""
        await self.stop_network()
        if self._file_handler is not None:
            logging.getLogger().removeHandler(self._file_handler)
            self._file_handler.close()
            self._file_handler = None

    # -- observation ------------------------------------------------------------------------

    def status(self) -> NodeStatus | None:
        """A snapshot of the running node (None while the network server is not running)."""
        return None if self.node is None else node_status(self.node)

    def active_jobs(self) -> list[ActiveJob]:
        """Requests in flight on this node's schedulers, oldest first."""
        return [] if self.node is None else active_jobs(self.node)

    def _log_to_file(self, config: NodeConfig) -> None:
        """One log file per network-server start, like ``run``; the UI keeps its own copy in view."""
        root = logging.getLogger()
        apply_level(config.log_level)
        if self._file_handler is not None:
            root.removeHandler(self._file_handler)
            self._file_handler.close()
        handler, path = open_run_log(config.node_id)
        root.addHandler(handler)
        self._file_handler, self.log_file = handler, path


def describe_layers(spans: list[tuple[int, int]]) -> str:
    """``[(1, 30)]`` -> ``layers 1-29`` (inclusive, like the node's log)."""
    return "layers " + ", ".join(f"{start}-{end - 1}" for start, end in spans)
