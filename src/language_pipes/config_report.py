"""The human-readable summary of a configuration (``language-pipes -c FILE config``) and key shorteners.

Secrets are never printed whole: keys are shortened to their first and last characters.
"""

from __future__ import annotations

from language_pipes.config import NodeConfig


def shorten_network_key(key: str) -> str:
    """``ab12…ef90``: enough to tell keys apart, not enough to join the network."""
    return f"{key[:4]}…{key[-4:]}" if len(key) > 8 else "…"


def shorten_api_key(key: str) -> str:
    """``fo…``: at most two leading characters, and never the whole key."""
    return key[: min(2, len(key) - 1)] + "…"


def config_report(config: NodeConfig, source: str | None = None) -> str:
    """A readable multi-line report of the resolved configuration, secrets shortened."""
    api_keys = ", ".join(shorten_api_key(key) for key in config.api_keys)
    bootstrap = ", ".join(f"{node.address}:{node.port}" for node in config.bootstrap_nodes)
    rows: list[tuple[str, str] | str] = [
        f"Language Pipes configuration{f' ({source})' if source else ''}",
        ("node_id", config.node_id),
        ("log_level", config.log_level),
        ("batch_invariant", str(config.batch_invariant).lower()),
        (
            "speculation",
            f"on, up to {config.speculation_max_tokens} drafted tokens per step"
            if config.speculation
            else "off",
        ),
        ("torch_threads", str(config.torch_threads)),
        "API",
        ("job_port", str(config.job_port) if config.job_port else "not set (no API server)"),
        ("api_ip", config.api_ip + (" (this machine only)" if config.api_ip == "127.0.0.1" else "")),
        ("api_keys", api_keys or "none (no authentication required)"),
        ("max_api_jobs", f"{config.max_api_jobs} pending per key"),
        "Network",
        ("network_ip", config.network_ip),
        ("listen_ip", config.listen_ip or f"{config.network_ip} (network_ip)"),
        ("peer_port", str(config.peer_port)),
        ("lane_port", str(config.lane_port) if config.lane_port else "any free port"),
        (
            "network_key",
            shorten_network_key(config.network_key)
            if config.network_key
            else "not set: any node that reaches peer_port can join",
        ),
        ("whitelist_node_ids", ", ".join(config.whitelist_node_ids) or "none (any node)"),
        ("bootstrap_nodes", bootstrap or "none"),
        ("max_node_jobs", str(config.max_node_jobs)),
        "Models",
        ("end_models", "none" if not config.end_models else ""),
        *[
            f"    {model.model_id}  device={model.device}  num_local_layers={model.num_local_layers}"
            + (f"  data_type={model.data_type}" if model.data_type else "")
            for model in config.end_models
        ],
        ("layer_models", "none" if not config.layer_models else ""),
        *[
            f"    {model.model_id}  device={model.device}  memory={model.memory:g} GB"
            f"  data_type={model.data_type}"
            for model in config.layer_models
        ],
    ]
    lines: list[str] = []
    for row in rows:
        if isinstance(row, str):
            lines.append(row if row.startswith(("    ", "Language")) else f"{row}:")
        else:
            lines.append(f"  {row[0]:<20}{row[1]}".rstrip())
    return "\n".join(lines)
