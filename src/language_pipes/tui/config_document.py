"""A saved configuration file as the terminal UI edits it: validated like ``load_config``, saved with tomlkit.

Every edit builds a candidate document, validates it through the same
:class:`~language_pipes.config.NodeConfig` model and messages as the config
file, and is written back only if the keys it touched are valid. The file is
rewritten through tomlkit, so the user's comments, key order and layout stay.

A configuration being built in the UI may still lack required keys (a new one
has no ``node_id``); such problems do not block edits of other keys, they are
listed by :meth:`ConfigDocument.problems` and shown on the Home tab.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tomlkit
from pydantic import ValidationError
from tomlkit.items import Table
from tomlkit.toml_document import TOMLDocument

from language_pipes.config import ConfigError, NodeConfig, describe_one_error, parse_config
from language_pipes.paths import configs_dir
from language_pipes.private_files import write_private_text

NEW_CONFIG_HEADER = (
    "# Language Pipes node configuration, created by the terminal UI (language-pipes).\n"
    "# You may edit it by hand too: comments and layout are kept when the UI saves it.\n"
)
_CONFIG_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
TABLE_LIST_KEYS = frozenset({"layer_models", "bootstrap_nodes"})

# Keys whose change takes effect only when the part that reads them restarts.
NETWORK_RESTART_KEYS = frozenset(
    {
        "node_id",
        "peer_port",
        "lane_port",
        "network_ip",
        "listen_ip",
        "network_key",
        "whitelist_node_ids",
        "bootstrap_nodes",
        "layer_models",
        "end_models",
        "torch_threads",
        "max_node_jobs",
    }
)
JOB_SERVER_RESTART_KEYS = frozenset(
    {
        "job_port",
        "api_ip",
        "api_keys",
        "max_api_jobs",
        "api_max_body_bytes",
        "api_max_prompt_chars",
        "api_allowed_origins",
        "api_allowed_hosts",
        "api_response_store_bytes",
    }
)


def check_config_name(name: str) -> str:
    """A saved config's NAME: letters, digits, ``.``, ``_`` and ``-``; raises :class:`ConfigError`."""
    name = name.strip()
    if not _CONFIG_NAME.fullmatch(name) or name.endswith(".toml"):
        raise ConfigError(
            f"{name!r}: a configuration name uses letters, digits, '.', '_' and '-' "
            "(at most 64, starting with a letter or digit)"
        )
    return name


def saved_config_names() -> list[str]:
    """Names of the configurations under ``$LP_APP_DIR/configs``, sorted."""
    folder = configs_dir()
    if not folder.is_dir():
        return []
    return sorted(path.stem for path in folder.glob("*.toml") if path.is_file())


def create_config(name: str) -> Path:
    """Create ``$LP_APP_DIR/configs/NAME.toml`` holding only a comment; refuse to overwrite."""
    path = configs_dir() / f"{check_config_name(name)}.toml"
    if path.exists():
        raise ConfigError(f"{path}: a configuration named {name.strip()!r} already exists")
    write_private_text(path, NEW_CONFIG_HEADER)
    return path


def delete_config(name: str) -> None:
    """Remove a saved configuration file."""
    path = configs_dir() / f"{check_config_name(name)}.toml"
    path.unlink(missing_ok=True)


class ConfigDocument:
    """One configuration file, kept as a tomlkit document between edits."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            # Opening a name that does not exist yet starts an empty configuration there.
            text = NEW_CONFIG_HEADER
        except (OSError, UnicodeDecodeError) as error:
            # Unreadable or not UTF-8: the same one-line report the CLI gives.
            raise ConfigError(f"{path}: cannot read the file ({error})") from None
        try:
            self.document: TOMLDocument = tomlkit.parse(text)
        except tomlkit.exceptions.ParseError as error:
            # A hand-edited file with a syntax error: name the line, like load_config does.
            raise ConfigError(f"{path}: TOML syntax error: {error}") from None

    @property
    def name(self) -> str:
        return self.path.stem

    def values(self) -> dict[str, Any]:
        """The document as plain Python data."""
        return dict(self.document.unwrap())

    def get(self, key: str, default: Any = None) -> Any:
        return self.values().get(key, default)

    def problems(self) -> list[str]:
        """Every validation problem of the whole file, one line each (empty when it is valid)."""
        try:
            NodeConfig.model_validate(self.values())
        except ValidationError as error:
            # The file is incomplete or wrong; each problem is reported, not raised.
            return [describe_one_error(problem) for problem in error.errors(include_url=False)]
        return []

    def config(self) -> NodeConfig:
        """The whole file as a validated config; raises :class:`ConfigError` like ``load_config``."""
        return parse_config(self.values(), source=self.path.name)

    def update(self, changes: Mapping[str, Any]) -> None:
        """Set (or, with ``None``, remove) top-level keys, validate them, then save the file.

        Raises :class:`ConfigError` with the config file's own message for the
        first problem in a changed key; nothing is saved then.
        """
        candidate = self.values()
        for key, value in changes.items():
            if value is None:
                candidate.pop(key, None)
            else:
                candidate[key] = value
        self._check(candidate, set(changes))
        for key, value in changes.items():
            if value is None:
                if key in self.document:
                    del self.document[key]
            else:
                self.document[key] = _as_toml(key, value)
        self.save()

    def _check(self, candidate: dict[str, Any], changed: set[str]) -> None:
        try:
            NodeConfig.model_validate(candidate)
        except ValidationError as error:
            # Only problems in the keys being edited block the edit; others show on Home.
            for problem in error.errors(include_url=False):
                location = problem["loc"]
                if (location and location[0] in changed) or (not location and changed):
                    raise ConfigError(f"{self.path.name}: {describe_one_error(problem)}") from None

    def save(self) -> None:
        """Write the document atomically, readable by its owner only (it may hold keys)."""
        write_private_text(self.path, tomlkit.dumps(self.document))


def _as_toml(key: str, value: Any) -> Any:
    """Lists of tables become ``[[key]]`` sections; end models stay short strings when they can."""
    if key in TABLE_LIST_KEYS and isinstance(value, list):
        tables = tomlkit.aot()
        for entry in value:
            table: Table = tomlkit.table()
            table.update(entry)
            tables.append(table)
        return tables if value else tomlkit.array()
    if key == "end_models" and isinstance(value, list):
        array = tomlkit.array()
        for entry in value:
            if isinstance(entry, dict) and set(entry) == {"model_id"}:
                array.append(entry["model_id"])
            elif isinstance(entry, dict):
                inline = tomlkit.inline_table()
                inline.update(entry)
                array.append(inline)
            else:
                array.append(entry)
        return array
    return value


def restart_needed_for(keys: set[str]) -> tuple[bool, bool]:
    """Whether changing ``keys`` needs (network server, job server) restarts to take effect."""
    return bool(keys & NETWORK_RESTART_KEYS), bool(keys & JOB_SERVER_RESTART_KEYS)
