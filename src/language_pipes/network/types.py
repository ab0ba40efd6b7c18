"""Plain data of the network layer: node ids, message kinds, node records and errors."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NewType

from language_pipes.network.limits import (
    MAX_END_MODELS,
    MAX_HOST_CHARS,
    MAX_LAYER_INDEX,
    MAX_LOAD,
    MAX_MODEL_ID_CHARS,
    MAX_NODE_ID_CHARS,
    MAX_SEGMENTS,
    MAX_VERSION,
)

NodeId = NewType("NodeId", str)
MessageKind = NewType("MessageKind", str)

# Kinds starting with this prefix are the network's own (heartbeat, gossip, leave).
RESERVED_KIND_PREFIX = "lp."
MAX_KIND_BYTES = 255


class NetworkError(Exception):
    """Base class of the errors the network layer raises to its callers."""


class PeerUnavailableError(NetworkError):
    """The peer is not (or no longer) a live, authenticated member of the network."""


class PeerLostError(PeerUnavailableError):
    """The peer was dropped while a request to it was waiting for its reply."""


class PeerRequestTimeout(NetworkError, TimeoutError):
    """A request got no reply within its timeout."""


class RefusalKind(StrEnum):
    """Why a node refused a request: a closed set, sent in the error reply's header as ``refusal``.

    The requester maps a kind to its own words; the peer's free text is only
    ever logged, never shown to a client.
    """

    BUSY = "busy"  # the requester already holds as many sequences there as the node allows
    NO_MEMORY = "no_memory"  # the node cannot reserve the memory the request needs
    LEAVING = "leaving"  # the node is leaving the network
    NOT_HOSTED = "not_hosted"  # the node does not host what the request names
    NOT_OWNER = "not_owner"  # what the request names belongs to another node
    INVALID = "invalid"  # the request itself is malformed or out of bounds


class RequestRefused(NetworkError):
    """Raised by a request handler to refuse with a typed reason; the requester gets PeerRequestFailed."""

    def __init__(self, kind: RefusalKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class PeerRequestFailed(NetworkError):
    """The peer answered a request with an error (no handler, or its handler raised).

    ``refusal`` is the typed reason when the peer refused on purpose, None for
    any other failure (or a kind this node does not know).
    """

    def __init__(self, message: str, refusal: RefusalKind | None = None) -> None:
        super().__init__(message)
        self.refusal = refusal


def refusal_kind(value: object) -> RefusalKind | None:
    """The RefusalKind a peer sent, or None for anything else (absent, unknown, not a string)."""
    try:
        return RefusalKind(value) if isinstance(value, str) else None
    except ValueError:
        # A kind from a newer node, or garbage: treat it as an untyped failure.
        return None


class NotWhitelistedError(PeerUnavailableError):
    """``whitelist_node_ids`` forbids talking to this node."""


@dataclass(frozen=True)
class HostedSegment:
    """Layers ``start_layer <= i < end_layer`` of ``model_id`` hosted by a node.

    ``data_type`` names the weights' format (``bfloat16``, ``int8``, ...; None
    from a node that does not say). A ``private`` segment is an end model's own
    last layers: it counts as covered for placement, but it serves no other
    node's route.
    """

    model_id: str
    start_layer: int
    end_layer: int
    loaded: bool
    data_type: str | None = None
    private: bool = False

    def to_wire(self) -> dict[str, Any]:
        return {
            "model_id": self.model_id,
            "start_layer": self.start_layer,
            "end_layer": self.end_layer,
            "loaded": self.loaded,
            "data_type": self.data_type,
            "private": self.private,
        }

    @staticmethod
    def from_wire(data: Any) -> HostedSegment:
        if not isinstance(data, dict):
            raise ValueError("segment must be an object")
        model_id, start, end, loaded = (
            data.get("model_id"),
            data.get("start_layer"),
            data.get("end_layer"),
            data.get("loaded"),
        )
        if not _is_text(model_id, MAX_MODEL_ID_CHARS):
            raise ValueError(f"segment model_id must be a string of 1..{MAX_MODEL_ID_CHARS} characters")
        if not _is_int(start) or not _is_int(end) or not 0 <= start < end <= MAX_LAYER_INDEX:
            raise ValueError(f"segment needs integers 0 <= start_layer < end_layer <= {MAX_LAYER_INDEX}")
        if not isinstance(loaded, bool):
            raise ValueError("segment loaded must be a boolean")
        data_type, private = data.get("data_type"), data.get("private", False)
        if data_type is not None and not (isinstance(data_type, str) and _DATA_TYPE.fullmatch(data_type)):
            raise ValueError("segment data_type must be a short lower-case name or null")
        if not isinstance(private, bool):
            raise ValueError("segment private must be a boolean")
        return HostedSegment(model_id, start, end, loaded, data_type, private)


@dataclass(frozen=True)
class NodeRecord:
    """What a node tells the network about itself; signed by its owner and gossiped.

    ``version`` grows with every change (and across restarts: it starts from the
    wall clock in nanoseconds), so the newest record always wins.
    """

    node_id: NodeId
    public_key: bytes
    address: str
    port: int
    segments: tuple[HostedSegment, ...]
    end_models: tuple[str, ...]
    load: int
    version: int
    # Where this node answers step lanes (network/lanes.py); None: steps go over ``port``.
    lane_port: int | None = None

    def to_wire(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "public_key": self.public_key.hex(),
            "address": self.address,
            "port": self.port,
            "segments": [segment.to_wire() for segment in self.segments],
            "end_models": list(self.end_models),
            "load": self.load,
            "version": self.version,
            "lane_port": self.lane_port,
        }

    @staticmethod
    def from_wire(data: Any) -> NodeRecord:
        if not isinstance(data, dict):
            raise ValueError("record must be an object")
        node_id, address, port = data.get("node_id"), data.get("address"), data.get("port")
        load, version, end_models = data.get("load"), data.get("version"), data.get("end_models")
        if not _is_text(node_id, MAX_NODE_ID_CHARS):
            raise ValueError(f"record node_id must be a string of 1..{MAX_NODE_ID_CHARS} characters")
        if not isinstance(address, str) or not is_host(address):
            raise ValueError("record address must be an IP address or a host name")
        if not _is_int(port) or not 0 < port < 65536:
            raise ValueError("record port must be 1..65535")
        lane_port = data.get("lane_port")
        if lane_port is not None and (not _is_int(lane_port) or not 0 < lane_port < 65536):
            raise ValueError("record lane_port must be 1..65535 or null")
        if (
            not _is_int(load)
            or not 0 <= load <= MAX_LOAD
            or not _is_int(version)
            or not 0 <= version <= MAX_VERSION
        ):
            raise ValueError("record load and version must be non-negative integers in range")
        if (
            not isinstance(end_models, list)
            or len(end_models) > MAX_END_MODELS
            or not all(_is_text(m, MAX_MODEL_ID_CHARS) for m in end_models)
        ):
            raise ValueError(f"record end_models must be a list of at most {MAX_END_MODELS} model ids")
        segments = data.get("segments")
        if not isinstance(segments, list) or len(segments) > MAX_SEGMENTS:
            raise ValueError(f"record segments must be a list of at most {MAX_SEGMENTS}")
        public_key = bytes.fromhex(str(data.get("public_key", "")))
        if len(public_key) != 32:
            raise ValueError("record public_key must be 32 bytes")
        return NodeRecord(
            node_id=NodeId(node_id),
            public_key=public_key,
            address=address,
            port=port,
            segments=tuple(HostedSegment.from_wire(segment) for segment in segments),
            end_models=tuple(end_models),
            load=load,
            version=version,
            lane_port=lane_port,
        )


_DATA_TYPE = re.compile(r"[a-z0-9]{1,16}")
_HOSTNAME_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def is_host(text: str) -> bool:
    """True for an IP address or a syntactically valid host name (what a peer may advertise)."""
    if not text or len(text) > MAX_HOST_CHARS:
        return False
    try:
        ipaddress.ip_address(text)
    except ValueError:
        # Not an IP address; it may still be a host name.
        labels = text.removesuffix(".").split(".")
        if not all(_HOSTNAME_LABEL.fullmatch(label) for label in labels):
            return False
        # All-numeric dotted names are meant as IPv4 addresses, and that one was not valid.
        return not all(label.isdigit() for label in labels)
    return True


def _is_text(value: object, max_chars: int) -> bool:
    return isinstance(value, str) and 0 < len(value) <= max_chars


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
