"""The ``language-pipes`` command, in process and as the real executable in a subprocess."""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from language_pipes import __version__, cli
from language_pipes.config import NodeConfig
from language_pipes.process_settings import OPENMP_DEFAULTS, THREAD_VARIABLES, prepare_native_threads

try:
    from .test_config import BAD_CONFIGS, NETWORK_KEY
except ImportError:
    # tests/unit is not a package: pytest put this folder itself on sys.path.
    from test_config import BAD_CONFIGS, NETWORK_KEY  # type: ignore[no-redef]

LOG_LINE = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2},\d{3}: (.*)$")


def console_script() -> str:
    beside_python = Path(sys.executable).with_name("language-pipes")
    found = str(beside_python) if beside_python.exists() else shutil.which("language-pipes")
    assert found, "the language-pipes console script is not installed (pip install -e .)"
    return found


LAUNCHERS = {"module": [sys.executable, "-m", "language_pipes"], "script": [console_script()]}


@pytest.fixture(autouse=True)
def isolated_app_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    app_dir = tmp_path / "app"
    monkeypatch.setenv("LP_APP_DIR", str(app_dir))
    monkeypatch.delenv("LP_TORCH_THREADS", raising=False)
    return app_dir


def launch(launcher: str, *arguments: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*LAUNCHERS[launcher], *arguments],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env=os.environ,
    )


@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
@pytest.mark.parametrize(("case", "text", "expected"), BAD_CONFIGS, ids=[case[0] for case in BAD_CONFIGS])
def test_bad_config_fails_before_anything_starts(
    tmp_path: Path, isolated_app_dir: Path, launcher: str, case: str, text: str, expected: str
) -> None:
    (tmp_path / "bad.toml").write_text(text, encoding="utf-8")
    result = launch(launcher, "-c", "bad.toml", "run", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: bad.toml: ") and expected in lines[0]
    assert not (isolated_app_dir / "logs").exists()


@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_missing_file_fails_before_anything_starts(
    tmp_path: Path, isolated_app_dir: Path, launcher: str
) -> None:
    result = launch(launcher, "-c", "absent.toml", "run", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == "error: absent.toml: missing file\n"
    assert result.stdout == "" and not (isolated_app_dir / "logs").exists()


@pytest.mark.parametrize("command", ["run", "config"])
def test_commands_that_need_a_config_say_so(tmp_path: Path, command: str) -> None:
    result = launch("script", command, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == f"error: '{command}' needs a configuration: language-pipes -c FILE {command}\n"


def test_version(tmp_path: Path) -> None:
    result = launch("script", "-v", cwd=tmp_path)
    assert (result.returncode, result.stdout) == (0, f"language-pipes {__version__}\n")
    assert launch("module", "--version", cwd=tmp_path).stdout == result.stdout


def test_help_lists_the_commands(tmp_path: Path) -> None:
    result = launch("script", "-h", cwd=tmp_path)
    assert result.returncode == 0
    for command in ("run", "config", "keygen", "--config"):
        assert command in result.stdout


def test_keygen_prints_a_fresh_32_hex_key(tmp_path: Path) -> None:
    keys = [launch("script", "keygen", cwd=tmp_path).stdout for _ in range(2)]
    for key in keys:
        assert re.fullmatch(r"[0-9a-f]{32}\n", key)
    assert keys[0] != keys[1]


def test_config_report_hides_secrets(tmp_path: Path) -> None:
    (tmp_path / "node.toml").write_text(
        f'node_id = "node-1"\njob_port = 8123\napi_keys = ["foo", "barbaz"]\nnetwork_key = "{NETWORK_KEY}"\n'
        'end_models = ["HuggingFaceTB/SmolLM2-135M-Instruct"]\n',
        encoding="utf-8",
    )
    result = launch("script", "-c", "node.toml", "config", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "node-1" in result.stdout and "8123" in result.stdout
    assert "HuggingFaceTB/SmolLM2-135M-Instruct" in result.stdout
    assert NETWORK_KEY not in result.stdout and "ab12…ef90" in result.stdout
    assert "foo" not in result.stdout and "barbaz" not in result.stdout


def test_config_by_saved_name(tmp_path: Path, isolated_app_dir: Path) -> None:
    saved = isolated_app_dir / "configs" / "demo.toml"
    saved.parent.mkdir(parents=True)
    saved.write_text('node_id = "saved-node"\n', encoding="utf-8")
    result = launch("module", "-c", "demo", "config", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "saved-node" in result.stdout and str(saved) in result.stdout


@pytest.fixture
def restored_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for variable in THREAD_VARIABLES:
        monkeypatch.setenv(variable, "99")  # so the test's own values come back afterwards
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in root.handlers:
        if handler not in handlers:
            handler.close()
    root.handlers[:] = handlers
    root.setLevel(level)


def test_run_logs_then_hands_the_config_to_the_node(
    tmp_path: Path,
    isolated_app_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    restored_logging: None,
) -> None:
    received: list[NodeConfig] = []

    def run_node(config: NodeConfig) -> int:
        received.append(config)
        logging.getLogger("language_pipes.node").info("node %s started", config.node_id)
        return 7

    fake_node = types.ModuleType("language_pipes.node")
    fake_node.run_node = run_node  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "language_pipes.node", fake_node)
    path = tmp_path / "node.toml"
    path.write_text('node_id = "node-1"\ntorch_threads = 1\n', encoding="utf-8")

    assert cli.main(["-c", str(path), "run"]) == 7

    assert [config.node_id for config in received] == ["node-1"]
    assert os.environ["OMP_NUM_THREADS"] == "1"
    stdout_lines = [line for line in capsys.readouterr().out.splitlines() if line]
    assert [LOG_LINE.match(line).group(1) for line in stdout_lines] == ["node node-1 started"]  # type: ignore[union-attr]
    log_files = list((isolated_app_dir / "logs").glob("node-1-*.log"))
    assert len(log_files) == 1
    assert "INFO language_pipes.node: node node-1 started" in log_files[0].read_text(encoding="utf-8")


def test_native_thread_settings_are_prepared_in_one_place(monkeypatch: pytest.MonkeyPatch) -> None:
    """run and the TUI both take the OpenMP defaults; only run overrides the user's thread counts."""
    for variable in (*THREAD_VARIABLES, *OPENMP_DEFAULTS):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("GOMP_SPINCOUNT", "123")  # the user's own choice wins
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    prepare_native_threads(2)  # the TUI's start
    assert os.environ["OMP_NUM_THREADS"] == "7" and os.environ["MKL_NUM_THREADS"] == "2"
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE" and os.environ["GOMP_SPINCOUNT"] == "123"
    prepare_native_threads(3, override_threads=True)  # language-pipes -c FILE run
    assert os.environ["OMP_NUM_THREADS"] == os.environ["MKL_NUM_THREADS"] == "3"
