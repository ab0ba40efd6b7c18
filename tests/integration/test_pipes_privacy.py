"""Privacy boundary: a layer-only node never receives prompt text, output text or token ids.

Two real :class:`Node` objects run in this process on loopback (real ZeroMQ
sockets, real encryption, the real API through the ``openai`` SDK). Every
message the layer node decrypts, of every kind (pipe frames, gossip, pings,
replies), is recorded by wrapping :meth:`Session.open` and, for steps that
come over a step lane, :meth:`ServerLane.open`. After a chat request
with a distinctive prompt, nothing recorded may contain the prompt or the
reply as UTF-8, nor any run of their token ids as 16/32/64-bit integers; step
headers must decode to sequence ids, positions and lengths only.
"""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from language_pipes.config import parse_config
from language_pipes.network.lanes import RequestPrefix, ServerLane
from language_pipes.network.session import Session
from language_pipes.node import Node
from language_pipes.pipes.frames import KIND_OPEN, KIND_RELEASE, KIND_STEP, decode_sequence_ids, decode_step
from language_pipes.vocabulary import ModelId
from support.cluster import DEFAULT_MODEL, new_network_key
from support.in_process_pipe import layer_only_node, start_pipe
from support.node_process import free_port

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

SECRET = "Zebulon's passphrase is quixotic-marmalade-4471; repeat the passphrase back to me."
MAX_TOKENS = 16
TOKEN_WINDOW = 4  # consecutive token ids; 4 int16 values are already 8 bytes of specific content
LAYER_NODE = "layer-only"


@dataclass(frozen=True)
class Received:
    kind: str
    header: dict[str, Any] | bytes
    payload: bytes
    via: str  # "session" (the peer network) or "lane"


@dataclass
class PrivacyRun:
    origin: Node
    layer: Node
    received: list[Received]
    prompt_ids: list[int]
    reply_text: str
    reply_ids: list[int]
    completion_tokens: int
    finish_reason: str


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def run(tmp_path_factory: pytest.TempPathFactory, model_store_dir: Path) -> AsyncIterator[PrivacyRun]:
    patch = pytest.MonkeyPatch()
    patch.setenv("LP_APP_DIR", str(tmp_path_factory.mktemp("privacy-app")))
    patch.setenv("LP_MODEL_DIR", str(model_store_dir))
    received: list[Received] = []
    original_open = Session.open

    def recording_open(self: Session, *arguments: Any) -> Any:
        inner, payload = original_open(self, *arguments)
        if self.own_id == LAYER_NODE:
            envelope = arguments[0]
            received.append(Received(envelope.kind, inner.header, bytes(payload), "session"))
        return inner, payload

    original_lane_open = ServerLane.open

    def recording_lane_open(self: ServerLane, prefix: RequestPrefix, *arguments: Any) -> list[bytes]:
        header, payload = original_lane_open(self, prefix, *arguments)
        if self.session.own_id == LAYER_NODE:
            received.append(Received(prefix.kind, header, payload, "lane"))
        return [header, payload]

    patch.setattr(Session, "open", recording_open)
    patch.setattr(ServerLane, "open", recording_lane_open)
    key = new_network_key()
    origin_peer_port = free_port()
    origin = Node(
        parse_config(
            {
                "node_id": "origin",
                "job_port": free_port(),
                "peer_port": origin_peer_port,
                "network_key": key,
                "end_models": [DEFAULT_MODEL],
                "torch_threads": 1,
            }
        )
    )
    layer = layer_only_node(LAYER_NODE, key, origin_peer_port)
    try:
        client = await start_pipe(origin, layer)
        messages = [{"role": "user", "content": SECRET}]
        completion = await client.chat.completions.create(
            model=DEFAULT_MODEL,
            messages=messages,  # type: ignore[arg-type]
            max_tokens=MAX_TOKENS,
            temperature=0,
        )
        await asyncio.sleep(0.5)  # the release message follows the last step
        end_model = origin.models[ModelId(DEFAULT_MODEL)].end_model
        assert end_model is not None
        reply_text = completion.choices[0].message.content or ""
        yield PrivacyRun(
            origin,
            layer,
            received,
            prompt_ids=end_model.encode_chat(messages),  # type: ignore[arg-type]
            reply_text=reply_text,
            reply_ids=list(end_model.tokenizer.encode(reply_text, add_special_tokens=False)),
            completion_tokens=completion.usage.completion_tokens if completion.usage else -1,
            finish_reason=completion.choices[0].finish_reason,
        )
    finally:
        await layer.stop()
        await origin.stop()
        patch.undo()


def _as_bytes(header: dict[str, Any] | bytes) -> bytes:
    return header if isinstance(header, bytes) else json.dumps(header).encode()


def _encodings(token_ids: list[int]) -> Iterable[bytes]:
    """Every ``TOKEN_WINDOW`` run of ids as uint16/int32/int64, little- and big-endian."""
    for start in range(len(token_ids) - TOKEN_WINDOW + 1):
        window = token_ids[start : start + TOKEN_WINDOW]
        for code in ("H", "i", "q"):
            for order in ("<", ">"):
                yield struct.pack(f"{order}{TOKEN_WINDOW}{code}", *window)


async def test_the_layer_node_ran_the_request(run: PrivacyRun) -> None:
    kinds = {message.kind for message in run.received}
    assert {KIND_OPEN, KIND_STEP, KIND_RELEASE} <= kinds
    # Steps take the step lane (the fast path), so its decrypted frames are what is checked here.
    assert {message.via for message in run.received if message.kind == KIND_STEP} == {"lane"}
    assert run.reply_text  # there was output to leak
    assert len(run.reply_ids) >= TOKEN_WINDOW and len(run.prompt_ids) > TOKEN_WINDOW


async def test_no_text_reaches_the_layer_node(run: PrivacyRun) -> None:
    secrets = [SECRET, "quixotic-marmalade", "Zebulon", run.reply_text]
    for message in run.received:
        for blob in (_as_bytes(message.header), message.payload):
            for secret in secrets:
                for encoding in ("utf-8", "utf-16-le", "utf-16-be"):
                    assert secret.encode(encoding) not in blob, f"{secret!r} in a {message.kind} message"


async def test_no_token_ids_reach_the_layer_node(run: PrivacyRun) -> None:
    patterns = set(_encodings(run.prompt_ids)) | set(_encodings(run.reply_ids))
    for message in run.received:
        for blob in (_as_bytes(message.header), message.payload):
            leaked = [pattern for pattern in patterns if pattern in blob]
            assert not leaked, f"token ids in a {message.kind} message"


async def test_pipe_frames_carry_only_ids_positions_lengths_and_hidden_states(run: PrivacyRun) -> None:
    hidden_size = run.origin.models[ModelId(DEFAULT_MODEL)].source.config.hidden_size
    sequence_ids: set[str] = set()
    fed = 0
    for message in run.received:
        if message.kind == KIND_OPEN:
            assert isinstance(message.header, dict)
            # max_tokens: the length the hop reserves KV memory for (prompt + output limit), a number.
            assert set(message.header) == {"model_id", "start", "end", "max_tokens"}
            assert isinstance(message.header["max_tokens"], int)
            sequence_ids.update(decode_sequence_ids(message.payload))
        elif message.kind == KIND_STEP:
            assert isinstance(message.header, bytes)
            step = decode_step(message.header)
            assert step.model_id == DEFAULT_MODEL
            assert set(step.batch.sequence_ids) <= sequence_ids
            assert step.batch.start_positions == (fed,)  # one sequence, positions advance by what was fed
            fed += step.batch.total_tokens
            element_size = 2  # bf16 hidden states
            assert len(message.payload) == step.batch.total_tokens * hidden_size * element_size
        elif message.kind == KIND_RELEASE:
            assert set(decode_sequence_ids(message.payload)) <= sequence_ids
    # The prompt and every generated token went through the layer node as hidden states, except a
    # last token that hit max_tokens (never fed back); an EOS is not counted as a completion token.
    unfed = 1 if run.finish_reason == "length" else 0
    assert fed == len(run.prompt_ids) + run.completion_tokens - unfed


async def test_the_layer_node_holds_no_tokenizer_or_embedding(run: PrivacyRun) -> None:
    hosted = run.layer.models[ModelId(DEFAULT_MODEL)]
    assert hosted.end_model is None
    assert hosted.generator is None and hosted.scheduler is None
    assert [(segment.start, segment.end) for segment in hosted.segments] == [(1, 30)]
    assert run.layer.servable_models() == []
