"""Every bound the network puts on what peers may send, in one place.

The largest legal message is a pipe step: hidden states of up to
:data:`MAX_STEP_TOKENS` tokens x :data:`MAX_HIDDEN_SIZE` x 4 bytes (float32),
plus a small header. ZeroMQ drops a connection whose frame exceeds
``ZMQ_MAXMSGSIZE`` before it is buffered whole, so every socket gets
:data:`DEFAULT_MAX_MESSAGE_BYTES` unless the node is configured otherwise.
"""

from __future__ import annotations

# Steps: the scheduler packs at most a 512-token budget per step; 4x margin.
MAX_STEP_TOKENS = 2048
# Hidden size of the widest models served today (e.g. 16384), float32 on the wire at most.
MAX_HIDDEN_SIZE = 16384
_MESSAGE_MARGIN_BYTES = 1 << 20
DEFAULT_MAX_MESSAGE_BYTES = MAX_STEP_TOKENS * MAX_HIDDEN_SIZE * 4 + _MESSAGE_MARGIN_BYTES

# JSON decoded from peers (handshake bodies, message headers, gossip).
MAX_HANDSHAKE_JSON_BYTES = 16 * 1024
MAX_HEADER_JSON_BYTES = 1 << 20
MAX_GOSSIP_JSON_BYTES = 4 << 20
MAX_JSON_DEPTH = 16

# Gossip and membership.
MAX_KNOWN_RECORDS = 1024  # records held in total (live or not)
MAX_RECORDS_PER_GOSSIP = MAX_KNOWN_RECORDS + 1  # a legitimate peer sends what it holds plus itself
MAX_PENDING_PER_SENDER = 128  # records one peer told us about that we could not yet connect to
RECORD_TTL_S = 30.0  # a record nobody gossiped again (and we are not connected to) expires
MAX_NODE_ID_CHARS = 128
MAX_MODEL_ID_CHARS = 256
MAX_HOST_CHARS = 253
MAX_SEGMENTS = 64
MAX_END_MODELS = 64
MAX_LAYER_INDEX = 4096
MAX_LOAD = 1 << 31
MAX_VERSION = (1 << 63) - 1

# Outbound connections: how many sockets, and how fast new ones may be opened.
MAX_OUTBOUND_CONNECTIONS = 512
CONNECT_RATE_PER_S = 20.0
CONNECT_BURST = 40

# Inbound connections: half-open handshakes kept, and authenticated sessions.
MAX_PENDING_HANDSHAKES = 256
MAX_INBOUND_SESSIONS = 1024
