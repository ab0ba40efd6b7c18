"""A real node process stops promptly on SIGTERM: the orderly stop, then the exit, with little work after.

Python's own teardown used to walk every object torch and transformers created
with the cyclic collector after the node had stopped: seconds of CPU, tens of
seconds of wall time on a loaded machine, between "stopping node" and the exit.
The exit is checked on the CPU time the process used after the signal (which a
busy machine does not stretch) and, generously, on the wall time.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psutil
import pytest

from support.node_process import DEFAULT_MODEL, NodeLauncher, single_node_settings

pytestmark = pytest.mark.slow

# The orderly stop and the exit need well under half a second of CPU; the teardown took 2-3 s.
EXIT_CPU_SECONDS = 1.5
# Generous: on an idle two-core machine the node exits within about a second of the signal.
EXIT_WALL_SECONDS = 15.0


def _cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def test_a_serving_node_exits_soon_after_sigterm(tmp_path: Path, model_store_dir: Path) -> None:
    launcher = NodeLauncher(tmp_path / "nodes", model_store_dir)
    try:
        node = launcher.start("exits", **single_node_settings(DEFAULT_MODEL))
        node.wait_until_serving(DEFAULT_MODEL)
        pid = node.process.pid
        cpu_before = _cpu_seconds(pid)
        signalled_at = time.monotonic()
        os.killpg(pid, signal.SIGTERM)
        # wait4 reports the CPU time of the whole run once the process is gone.
        _, status, usage = os.wait4(pid, 0)
        wall = time.monotonic() - signalled_at
        node.process.returncode = os.waitstatus_to_exitcode(status)
        cpu_after_signal = usage.ru_utime + usage.ru_stime - cpu_before

        assert node.process.returncode == 0, node.output()
        assert "stopping node exits" in node.output()
        assert cpu_after_signal < EXIT_CPU_SECONDS, f"{cpu_after_signal:.2f} s of CPU after SIGTERM"
        assert wall < EXIT_WALL_SECONDS, f"exited {wall:.1f} s after SIGTERM"
    finally:
        launcher.stop_all()
