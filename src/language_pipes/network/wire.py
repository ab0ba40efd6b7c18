"""The byte layout of peer frames (the only place that knows it).

A message is a ZeroMQ multipart message. Its first frame is a small plaintext
*envelope* saying what follows:

* handshake frames: ``version, frame type, flags`` then one body frame
  (JSON of a few short fields; sealed with the network key when there is one);
* data frames: ``version, DATA, counter, kind`` then two sealed frames: the
  *inner header* (role, header format, correlation id, caller header) and the
  raw *payload* (tensor bytes travel here untouched by any codec).

The envelope is authenticated as associated data, so nobody can change the
kind or counter of a sealed frame.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from typing import Any, Literal

from language_pipes.network.limits import MAX_HANDSHAKE_JSON_BYTES, MAX_HEADER_JSON_BYTES, MAX_JSON_DEPTH

PROTOCOL_VERSION = 1

FrameType = Literal["hello", "welcome", "auth", "ready", "refuse", "data"]
_FRAME_TYPE_CODES: dict[FrameType, int] = {
    "hello": 1,
    "welcome": 2,
    "auth": 3,
    "ready": 4,
    "refuse": 5,
    "data": 6,
}
_FRAME_TYPES_BY_CODE: dict[int, FrameType] = {code: name for name, code in _FRAME_TYPE_CODES.items()}

Role = Literal["oneway", "request", "response", "error"]
_ROLE_CODES: dict[Role, int] = {"oneway": 0, "request": 1, "response": 2, "error": 3}
_ROLES_BY_CODE: dict[int, Role] = {code: name for name, code in _ROLE_CODES.items()}

HEADER_FORMAT_RAW = 0
HEADER_FORMAT_JSON = 1

FLAG_SEALED = 1

_HANDSHAKE_ENVELOPE = struct.Struct("!BBB")
_DATA_ENVELOPE = struct.Struct("!BBQB")
_INNER_HEADER = struct.Struct("!BBQ")


class MalformedFrame(Exception):
    """Bytes that do not follow this module's layout."""


@dataclass(frozen=True)
class Envelope:
    """The decoded plaintext first frame."""

    frame_type: FrameType
    sealed: bool = False
    counter: int = 0
    kind: str = ""


@dataclass(frozen=True)
class InnerHeader:
    """The sealed per-message header: what the message is and the caller's own header."""

    role: Role
    correlation_id: int
    header: dict[str, Any] | bytes


def encode_handshake_envelope(frame_type: FrameType, sealed: bool) -> bytes:
    return _HANDSHAKE_ENVELOPE.pack(PROTOCOL_VERSION, _FRAME_TYPE_CODES[frame_type], FLAG_SEALED * sealed)


def encode_data_envelope(counter: int, kind: str) -> bytes:
    kind_bytes = kind.encode()
    if len(kind_bytes) > 255:
        raise ValueError("message kind longer than 255 bytes")
    return (
        _DATA_ENVELOPE.pack(PROTOCOL_VERSION, _FRAME_TYPE_CODES["data"], counter, len(kind_bytes))
        + kind_bytes
    )


def decode_envelope(data: bytes | memoryview) -> Envelope:
    raw = bytes(data)
    if len(raw) < _HANDSHAKE_ENVELOPE.size or raw[0] != PROTOCOL_VERSION:
        raise MalformedFrame("unknown protocol version or short envelope")
    frame_type = _FRAME_TYPES_BY_CODE.get(raw[1])
    if frame_type is None:
        raise MalformedFrame(f"unknown frame type {raw[1]}")
    if frame_type != "data":
        return Envelope(frame_type, sealed=bool(raw[2] & FLAG_SEALED))
    if len(raw) < _DATA_ENVELOPE.size:
        raise MalformedFrame("short data envelope")
    _, _, counter, kind_length = _DATA_ENVELOPE.unpack_from(raw)
    kind_bytes = raw[_DATA_ENVELOPE.size : _DATA_ENVELOPE.size + kind_length]
    if len(kind_bytes) != kind_length:
        raise MalformedFrame("truncated message kind")
    return Envelope("data", sealed=True, counter=counter, kind=kind_bytes.decode(errors="replace"))


def encode_inner_header(role: Role, correlation_id: int, header: dict[str, Any] | bytes) -> bytes:
    if isinstance(header, dict):
        body = json.dumps(header, separators=(",", ":")).encode()
        header_format = HEADER_FORMAT_JSON
    else:
        body = bytes(header)
        header_format = HEADER_FORMAT_RAW
    return _INNER_HEADER.pack(_ROLE_CODES[role], header_format, correlation_id) + body


def decode_inner_header(data: bytes) -> InnerHeader:
    if len(data) < _INNER_HEADER.size:
        raise MalformedFrame("short inner header")
    role_code, header_format, correlation_id = _INNER_HEADER.unpack_from(data)
    role = _ROLES_BY_CODE.get(role_code)
    if role is None:
        raise MalformedFrame(f"unknown role {role_code}")
    body = data[_INNER_HEADER.size :]
    if header_format == HEADER_FORMAT_RAW:
        return InnerHeader(role, correlation_id, body)
    if header_format != HEADER_FORMAT_JSON:
        raise MalformedFrame(f"unknown header format {header_format}")
    header = loads_bounded(body, MAX_HEADER_JSON_BYTES)
    if not isinstance(header, dict):
        raise MalformedFrame("JSON header must be an object")
    return InnerHeader(role, correlation_id, header)


def encode_json_body(fields: dict[str, Any]) -> bytes:
    return json.dumps(fields, separators=(",", ":"), sort_keys=True).encode()


def decode_json_body(data: bytes | memoryview) -> dict[str, Any]:
    fields = loads_bounded(data, MAX_HANDSHAKE_JSON_BYTES)
    if not isinstance(fields, dict):
        raise MalformedFrame("body must be a JSON object")
    return fields


# A JSON string (possessive: no backtracking), and the brackets that nest.
_JSON_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+"')
_JSON_BRACKET = re.compile(rb"[\[\]{}]")


def loads_bounded(data: bytes | memoryview, max_bytes: int, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``json.loads`` for bytes from a peer: size and nesting are checked before parsing.

    Deep nesting would make the parser recurse (a RecursionError, or worse), so
    brackets outside strings are counted first, in linear time.
    """
    if len(data) > max_bytes:
        raise MalformedFrame(f"JSON of {len(data)} bytes (at most {max_bytes})")
    raw = bytes(data)
    depth = 0
    for bracket in _JSON_BRACKET.finditer(_JSON_STRING.sub(b'""', raw)):
        if bracket.group() in (b"[", b"{"):
            depth += 1
            if depth > max_depth:
                raise MalformedFrame(f"JSON nested deeper than {max_depth} levels")
        else:
            depth -= 1
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as error:
        # Garbage, a frame sealed with a key we do not share, or bytes that are not UTF-8.
        raise MalformedFrame("not valid JSON") from error
