"""This project on 127.0.0.1: 1 node (all), 2 nodes (end model | all layers), 3 nodes (end | half | rest).

Nodes are real processes started by ``benchmarks/cluster.py`` (``python -m language_pipes -c FILE run``)
with ``torch_threads`` set to the suite's thread count.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Literal

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from anchors.servers import BenchSettings, RunningServer, free_port, wait_until_answering  # noqa: E402
from cluster import LocalCluster, end_only, half_model_memory, layers_only, whole_model  # noqa: E402

NodeCount = Literal[1, 2, 3]


def start(settings: BenchSettings, nodes: NodeCount) -> RunningServer:
    pinned = "_pinned" if settings.core_per_process else ""
    cluster = LocalCluster(
        settings.scratch / f"this_project_{nodes}{pinned}", settings.threads, settings.core_per_process
    )
    model = settings.model_id
    try:
        end = cluster.start(
            "end", whole_model(model) if nodes == 1 else end_only(model), job_port=free_port()
        )
        if nodes == 2:
            cluster.start("layers", layers_only(4, model), bootstrap=end.peer_port)
        if nodes == 3:
            cluster.start(
                "layers-a",
                layers_only(half_model_memory(settings.model_folder), model),
                bootstrap=end.peer_port,
            )
            time.sleep(4)  # let layers-a claim the first half before layers-b looks for what is missing
            cluster.start("layers-b", layers_only(4, model), bootstrap=end.peer_port)
        cluster.wait_serving(end, model)
    except BaseException:
        cluster.stop()
        raise
    server = RunningServer(
        base_url=f"http://127.0.0.1:{end.job_port}/v1",
        model=model,
        processes={f"node {node.name}": node.process for node in cluster.nodes},
        logs={f"node {node.name}": cluster.folder / f"{node.name}.log" for node in cluster.nodes},
        notes=[
            f"{nodes} node(s), torch_threads={settings.threads} each"
            + (", node i pinned to core i" if settings.core_per_process else "")
        ],
        on_stop=cluster.stop,
    )
    try:
        wait_until_answering(server, 300)
    except BaseException:
        server.stop()
        raise
    return server
