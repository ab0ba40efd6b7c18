"""The ``language-pipes`` command: TUI (no subcommand), ``run``, ``config`` and ``keygen``.

Options come before the subcommand: ``language-pipes -c config.toml run``.
The configuration is loaded and validated before anything starts, so a bad
file costs one line on stderr and exit code 2, with no log file and no node.
Heavy imports (torch, the node, the TUI) happen only in the command that needs them.
"""

from __future__ import annotations

import argparse
import secrets
import sys
from collections.abc import Sequence

from language_pipes import __version__
from language_pipes.config import ConfigError, NodeConfig, load_config, resolve_config_path
from language_pipes.config_report import config_report
from language_pipes.process_settings import prepare_native_threads

USAGE_ERROR = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="language-pipes",
        description="Peer-to-peer distributed inference of open language models behind an "
        "OpenAI-compatible API. Without a command, opens the terminal interface.",
        epilog="Options go before the command, e.g.: language-pipes -c config.toml run",
    )
    parser.add_argument(
        "-c",
        "--config",
        metavar="FILE",
        help="a config file path containing .toml, or the NAME of a saved config "
        "($LP_APP_DIR/configs/NAME.toml)",
    )
    parser.add_argument(
        "--start",
        action="store_true",
        help="with the terminal interface and -c: start the network and job servers at once",
    )
    parser.add_argument("-v", "--version", action="version", version=f"language-pipes {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("run", help="run a node headless (needs -c)")
    commands.add_parser("config", help="print the resolved configuration, secrets shortened (needs -c)")
    commands.add_parser("keygen", help="print a new random network_key (32 hex characters)")
    return parser


def new_network_key() -> str:
    """32 hexadecimal characters (128 random bits) for ``network_key``."""
    return secrets.token_hex(16)


def fail(message: str) -> int:
    """Report a problem as one ``error:`` line on stderr and return the usage-error exit code."""
    print(f"error: {message}", file=sys.stderr)
    return USAGE_ERROR


def _load(config_argument: str | None, command: str) -> NodeConfig:
    if config_argument is None:
        raise ConfigError(f"'{command}' needs a configuration: language-pipes -c FILE {command}")
    return load_config(config_argument)


def command_run(config: NodeConfig) -> int:
    """Start logging and run the node until SIGINT/SIGTERM."""
    from language_pipes.logs import setup_logging

    # Native thread pools size themselves when torch loads; cap them before the node imports it.
    prepare_native_threads(config.torch_threads, override_threads=True)
    setup_logging(config.node_id, config.log_level)
    from language_pipes.node import run_node

    try:
        return run_node(config)
    except KeyboardInterrupt:
        # Ctrl-C that reached us instead of the node's own signal handling: stop without a traceback.
        return 130


def command_tui(config_argument: str | None, start: bool = False) -> int:
    from language_pipes.tui.app import run_tui  # textual loads only for the terminal interface

    if start and config_argument is None:
        raise ConfigError("--start needs a configuration: language-pipes -c FILE --start")
    return run_tui(resolve_config_path(config_argument) if config_argument else None, start=start)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        arguments = parser.parse_args(argv)
    except SystemExit as exit_request:
        # argparse exits for -h, -v and usage errors; hand its status back as our return value.
        return exit_request.code if isinstance(exit_request.code, int) else USAGE_ERROR

    if arguments.command == "keygen":
        print(new_network_key())
        return 0
    try:
        if arguments.command is None:
            return command_tui(arguments.config, arguments.start)
        config = _load(arguments.config, arguments.command)
    except ConfigError as error:
        # A bad or missing config: one line, nothing started.
        return fail(str(error))
    if arguments.command == "config":
        print(config_report(config, source=str(resolve_config_path(arguments.config))))
        return 0
    return command_run(config)
