"""The ``/v1/responses`` endpoint (OpenAI Responses API)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
