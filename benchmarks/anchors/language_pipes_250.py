"""Language Pipes 2.5.0 from PyPI, in its own virtualenv, on the same 2-node topology as ours.

Node 1 holds the end model and serves the OpenAI API; node 2 holds the layers. Its
``max_api_jobs`` and ``max_node_jobs`` are raised to the most concurrent streams the suite sends.
It expects models at ``$LP_MODEL_DIR/<org>/<name>/data``, so the suite's model folder is
symlinked there in a scratch model dir; it has no thread setting, so it gets the suite's
``OMP_NUM_THREADS``. Its code is only run, never imported into this project.
"""

from __future__ import annotations

from anchors.servers import (
    AnchorUnavailable,
    BenchSettings,
    RunningServer,
    free_port,
    start_process,
    stop_processes,
    thread_environment,
    wait_port_open,
    wait_until_answering,
)
from anchors.venvs import state_of


def _node_config(name: str, peer_port: int, jobs: int, body: str) -> str:
    limits = f"max_api_jobs = {jobs}\nmax_node_jobs = {jobs}"
    return f'node_id = "{name}"\npeer_port = {peer_port}\n{limits}\n{body}\n'


def start(settings: BenchSettings) -> RunningServer:
    venv = state_of("lp250")
    if not venv.ready:
        raise AnchorUnavailable(f"Language Pipes 2.5.0 venv: {venv.reason}")
    executable = venv.python.parent / "language-pipes"
    root = settings.scratch / "lp250"
    model_dir = root / "models"
    link = model_dir / settings.model_id / "data"
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.exists():
        link.symlink_to(settings.model_folder, target_is_directory=True)
    env = {
        **thread_environment(settings.threads),
        "LP_APP_DIR": str(root / "app"),
        "LP_MODEL_DIR": str(model_dir),
    }
    job_port, end_peer, layer_peer = free_port(), free_port(), free_port()
    jobs = settings.max_concurrency
    model = settings.model_id
    configs = {
        "end": _node_config("lp250-end", end_peer, jobs, f'job_port = {job_port}\nend_models = ["{model}"]'),
        "layers": _node_config(
            "lp250-layers",
            layer_peer,
            jobs,
            f'[[layer_models]]\nmodel_id = "{model}"\ndevice = "cpu"\nmemory = 4\n'
            f'[[bootstrap_nodes]]\naddress = "127.0.0.1"\nport = {end_peer}',
        ),
    }
    processes = {}
    logs = {}
    try:
        for name, text in configs.items():
            config = root / f"{name}.toml"
            config.write_text(text)
            label = f"node {name}"
            logs[label] = root / f"{name}.log"
            processes[label] = start_process([str(executable), "-c", str(config), "run"], logs[label], env)
            if name == "end":
                # the end node's peer server must listen before the layer node bootstraps from it
                wait_port_open(end_peer, processes[label], 180)
    except BaseException:
        stop_processes(list(processes.values()))
        raise
    server = RunningServer(
        base_url=f"http://127.0.0.1:{job_port}/v1",
        model=model,
        processes=processes,
        logs=logs,
        notes=[f"max_api_jobs = max_node_jobs = {jobs}", f"OMP_NUM_THREADS={settings.threads}"],
    )
    try:
        wait_until_answering(server, 600)
    except BaseException:
        server.stop()
        raise
    return server
