"""Language Pipes: peer-to-peer distributed inference behind an OpenAI-compatible API."""

__version__ = "0.1.0"
