"""Checks a ``/v1/responses`` answer against the Open Responses specification's own models.

The models come from the ``openresponses-types`` package (generated from the
spec). Each streamed event is validated by the model its ``type`` names; a type
the spec does not define is a failure, as is an answer the ``openai`` SDK's own
types reject (both are validated: the server must satisfy both).

Where the two disagree we follow OpenAI's objects (the clients people bring are
built on them) and say so here:

* ``created_at`` / ``completed_at``: the SDK types them as floats, the spec as
  integers; the server sends JSON integers, which both accept.
* ``text.format`` of type ``json_schema``: the package types ``schema`` as
  a required ``None`` (its generator lost the untyped object), so an echoed
  schema can never validate; the server echoes the schema as OpenAI does, and
  :func:`validate_response` nulls that one key for the spec's model only.
* ``output_text`` on the body: an SDK convenience the seed documents; the spec
  has no such field and ignores it.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable
from typing import Any

import openresponses_types as spec
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import BaseModel, TypeAdapter

_SDK_EVENTS: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)


def _event_models() -> dict[str, type[BaseModel]]:
    """Event type string -> the spec's model for it (read off each model's ``type`` enum)."""
    models: dict[str, type[BaseModel]] = {}
    for name in dir(spec):
        model = getattr(spec, name)
        if not (name.endswith("StreamingEvent") and isinstance(model, type) and issubclass(model, BaseModel)):
            continue
        annotation = model.model_fields["type"].annotation
        if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
            for member in annotation:
                models[str(member.value)] = model
    return models


EVENT_MODELS = _event_models()


def _spec_view(response: dict[str, Any]) -> dict[str, Any]:
    """The response with the one key the package cannot type (a json_schema format's schema) nulled."""
    view = json.loads(json.dumps(response))
    text_format = (view.get("text") or {}).get("format") or {}
    if text_format.get("type") == "json_schema":
        text_format["schema"] = None
    return view


def validate_response(response: dict[str, Any]) -> spec.ResponseResource:
    """Validate a whole response object against the spec and the SDK; returns the spec's model."""
    Response.model_validate(response)
    for key in ("created_at", "completed_at"):
        assert response.get(key) is None or isinstance(response[key], int), (key, response[key])
    return spec.ResponseResource.model_validate(_spec_view(response))


def validate_event(event: dict[str, Any]) -> BaseModel:
    """Validate one streamed event (its JSON object) against the spec's model for its type, and the SDK's."""
    event_type = event.get("type")
    assert event_type in EVENT_MODELS, f"event type {event_type!r} is not in the Open Responses spec"
    _SDK_EVENTS.validate_python(event)
    if isinstance(event.get("response"), dict):
        validate_response(event["response"])
        event = {**event, "response": _spec_view(event["response"])}
    return EVENT_MODELS[event_type].model_validate(event)


def validate_stream(events: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Validate every event and the stream's shape; returns the events.

    The shape is the spec's: sequence numbers count from 0, the stream opens
    with ``response.created`` and ends with exactly one terminal event, every
    item that is added is done (whole) before the next is added, and the
    terminal response's output equals the items the ``output_item.done`` events
    carried.
    """
    events = list(events)
    for event in events:
        validate_event(event)
    assert [event["sequence_number"] for event in events] == list(range(len(events)))
    assert events[0]["type"] == "response.created"
    terminal = {"response.completed", "response.incomplete", "response.failed"}
    assert events[-1]["type"] in terminal
    assert not any(event["type"] in terminal for event in events[:-1])
    final = events[-1]["response"]
    assert final["id"] == events[0]["response"]["id"]
    done_items: list[dict[str, Any]] = []
    open_index: int | None = None
    for event in events:
        if event["type"] == "response.output_item.added":
            assert open_index is None, "an item was added before the previous one was done"
            open_index = event["output_index"]
            assert open_index == len(done_items)
        elif event["type"] == "response.output_item.done":
            assert event["output_index"] == open_index
            done_items.append(event["item"])
            open_index = None
    assert open_index is None
    assert final["output"] == done_items
    return events


def parse_sse(text: str) -> list[dict[str, Any]]:
    """The JSON events of a raw SSE body (named frames, ending with ``data: [DONE]``)."""
    frames = [frame for frame in text.split("\n\n") if frame.strip()]
    assert frames[-1].strip() == "data: [DONE]"
    events = []
    for frame in frames[:-1]:
        lines = dict(line.split(": ", 1) for line in frame.splitlines())
        event = json.loads(lines["data"])
        assert lines["event"] == event["type"]
        events.append(event)
    return events
