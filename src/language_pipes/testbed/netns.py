"""Hosts with a real network between them: Linux network namespaces on one bridge, with link latency.

:class:`Testbed` creates ``hosts`` namespaces, each with its own address on a
private /24 behind a bridge in the calling namespace (so this process reaches
every host, and every host reaches the others), and removes all of it at
:meth:`Testbed.close` (and at exit, should a caller forget). Names carry this
process's id so concurrent runs do not collide. Root (CAP_NET_ADMIN) is needed;
:func:`unavailable_reason` says why a testbed cannot be made here, for a skip.

Latency: a node in host *i* listens on 127.0.0.1 inside its namespace and
advertises the host's address; :meth:`Testbed.start_delay_proxy` runs
:mod:`language_pipes.testbed.delay_proxy` in the namespace, from the host's
address to 127.0.0.1 on the same ports, holding each chunk RTT / 2 in each
direction. Everything other nodes send to that node's peer and lane ports
pays the round trip; the node's API, on the host's address directly, does not.
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import itertools
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass

_SUBNETS = ipaddress.ip_network("10.213.0.0/16")
_created = itertools.count()

# Every host is a namespace of its own, so every node can use the same ports.
PEER_PORT = 5000
LANE_PORT = 5001
API_PORT = 8000


@dataclass(frozen=True)
class Host:
    """One namespace: where its processes run and the address the others reach it at."""

    index: int
    namespace: str
    address: str

    def command(self, arguments: list[str]) -> list[str]:
        """``arguments`` run inside this host's namespace."""
        return ["ip", "netns", "exec", self.namespace, *arguments]


def node_settings(host: Host, with_api: bool = True) -> dict[str, object]:
    """Config keys of a node in ``host``: peer and lane ports behind its delay proxy, the API direct.

    The node listens on 127.0.0.1 (inside its namespace) and advertises the host's
    address, where :meth:`Testbed.start_delay_proxy` listens on the same ports.
    """
    settings: dict[str, object] = {
        "network_ip": host.address,
        "listen_ip": "127.0.0.1",
        "peer_port": PEER_PORT,
        "lane_port": LANE_PORT,
    }
    if with_api:
        settings.update(api_ip=host.address, job_port=API_PORT)
    return settings


def _ip(*arguments: str) -> None:
    subprocess.run(["ip", *arguments], check=True, capture_output=True, text=True)


def unavailable_reason() -> str | None:
    """Why network namespaces cannot be made here (None: they can)."""
    if not sys.platform.startswith("linux"):
        return "network namespaces need Linux"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    if os.geteuid() != 0:
        return "creating network namespaces needs root (run the netns tests as root)"
    probe = f"lpprobe{os.getpid()}"
    try:
        _ip("netns", "add", probe)
    except subprocess.CalledProcessError as error:
        return f"`ip netns add` fails here: {error.stderr.strip()}"
    _ip("netns", "delete", probe)
    return None


def _free_subnet() -> ipaddress.IPv4Network:
    """A /24 of 10.213.0.0/16 that no interface of this namespace uses yet."""
    listing = subprocess.run(["ip", "-4", "-o", "addr"], check=True, capture_output=True, text=True).stdout
    start = (os.getpid() * 7 + next(_created)) % 256
    for offset in range(256):
        subnet = list(_SUBNETS.subnets(new_prefix=24))[(start + offset) % 256]
        prefix = ".".join(str(subnet.network_address).split(".")[:3]) + "."
        if prefix not in listing:
            return subnet  # type: ignore[return-value]
    raise RuntimeError("every /24 of 10.213.0.0/16 is in use by other testbeds")


class Testbed:
    """``hosts`` network namespaces on one bridge; a context manager that always cleans up."""

    __test__ = False  # not a pytest test class, despite its name

    def __init__(self, hosts: int) -> None:
        if not 1 <= hosts <= 200:
            raise ValueError(f"between 1 and 200 hosts, got {hosts}")
        tag = f"{os.getpid()}{next(_created)}"
        self.bridge = f"lpb{tag}"[:15]
        self.hosts: list[Host] = []
        self._veths: list[str] = []
        self._proxies: list[subprocess.Popen[bytes]] = []
        self._closed = False
        atexit.register(self.close)
        subnet = _free_subnet()
        addresses = list(subnet.hosts())
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("addr", "add", f"{addresses[0]}/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            for index in range(hosts):
                self.hosts.append(self._add_host(index, tag, str(addresses[index + 1])))
        except BaseException:
            self.close()
            raise

    def _add_host(self, index: int, tag: str, address: str) -> Host:
        namespace = f"lp{tag}-{index}"
        outside, inside = f"lpv{tag}-{index}"[:15], f"lpw{tag}-{index}"[:15]
        _ip("netns", "add", namespace)
        _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
        self._veths.append(outside)
        _ip("link", "set", outside, "master", self.bridge)
        _ip("link", "set", outside, "up")
        _ip("link", "set", inside, "netns", namespace)
        _ip("-n", namespace, "link", "set", "lo", "up")
        _ip("-n", namespace, "addr", "add", f"{address}/24", "dev", inside)
        _ip("-n", namespace, "link", "set", inside, "up")
        return Host(index, namespace, address)

    def start_delay_proxy(
        self, host: Host, rtt_s: float, ports: tuple[int, ...] = (PEER_PORT, LANE_PORT)
    ) -> subprocess.Popen[bytes]:
        """Proxy ``host.address:PORT`` to ``127.0.0.1:PORT`` in ``host``'s namespace, RTT/2 each way."""
        forwards = [f"{host.address}:{port}=127.0.0.1:{port}" for port in ports]
        command = [sys.executable, "-m", "language_pipes.testbed.delay_proxy"]
        command += ["--delay-ms", str(rtt_s * 1000 / 2), *forwards]
        process = subprocess.Popen(
            host.command(command), stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True
        )
        self._proxies.append(process)
        assert process.stdout is not None
        line = process.stdout.readline().decode()
        if not line.startswith("READY"):
            raise RuntimeError(f"the delay proxy in {host.namespace} did not start (said {line!r})")
        return process

    def set_round_trip(self, rtt_s: float) -> None:
        """Change every proxy's delay to RTT / 2 per direction (for chunks read from now on)."""
        milliseconds = f"{rtt_s * 1000 / 2:g}"
        for process in self._proxies:
            assert process.stdin is not None and process.stdout is not None
            process.stdin.write(f"DELAY {milliseconds}\n".encode())
            process.stdin.flush()
            answer = process.stdout.readline().decode().split()
            if answer != ["DELAY", milliseconds]:
                raise RuntimeError(f"a delay proxy did not take the new delay (said {answer!r})")

    def close(self) -> None:
        """Stop the proxies, kill what still runs in the namespaces, delete namespaces and bridge."""
        if self._closed:
            return
        self._closed = True
        for process in self._proxies:
            with contextlib.suppress(ProcessLookupError):  # it exited already
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        for host in self.hosts:
            self._kill_processes_in(host.namespace)
        for host in self.hosts:
            subprocess.run(["ip", "netns", "delete", host.namespace], capture_output=True)
        for veth in self._veths:
            subprocess.run(["ip", "link", "delete", veth], capture_output=True)  # gone with its namespace
        subprocess.run(["ip", "link", "delete", self.bridge], capture_output=True)
        atexit.unregister(self.close)

    @staticmethod
    def _kill_processes_in(namespace: str) -> None:
        """Every process still in one of this testbed's namespaces was started into it by its user."""
        listing = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True).stdout
        for pid in listing.split():
            with contextlib.suppress(ProcessLookupError):  # exited since the listing
                os.kill(int(pid), signal.SIGKILL)

    def __enter__(self) -> Testbed:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
