"""Config loading: defaults, normalisation, saved names, and one-line errors for every bad case."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from language_pipes import paths
from language_pipes.config import (
    ConfigError,
    EndModelConfig,
    NodeConfig,
    load_config,
    parse_config,
    resolve_config_path,
    save_config,
)
from language_pipes.config_report import config_report

NETWORK_KEY = "ab12cd34ab12cd34ab12cd34ab12ef90"

# (case id, file contents, text the one-line error must contain)
BAD_CONFIGS: list[tuple[str, str, str]] = [
    ("syntax", 'node_id = "a"\njob_port = \n', "line 2: TOML syntax error"),
    ("wrong_type", 'node_id = "a"\njob_port = "8000"\n', 'job_port: must be an integer (got "8000")'),
    ("bool_as_int", 'node_id = "a"\nmax_api_jobs = true\n', "max_api_jobs: must be an integer"),
    ("unknown_key", 'node_id = "a"\njb_port = 8000\n', "unknown key 'jb_port'"),
    ("port_high", 'node_id = "a"\npeer_port = 70000\n', "peer_port: must be between 1 and 65535 (got 70000)"),
    ("lane_port_zero", 'node_id = "a"\nlane_port = 0\n', "lane_port: must be between 1 and 65535 (got 0)"),
    ("port_zero", 'node_id = "a"\njob_port = 0\n', "job_port: must be between 1 and 65535 (got 0)"),
    ("draft_zero", 'node_id = "a"\nspeculation_max_tokens = 0\n', "speculation_max_tokens: must be"),
    ("draft_huge", 'node_id = "a"\nspeculation_max_tokens = 33\n', "speculation_max_tokens: must be"),
    ("speculation_text", 'node_id = "a"\nspeculation = "yes"\n', "speculation: must be"),
    ("key_not_hex", f'node_id = "a"\nnetwork_key = "{"zz" * 16}"\n', "network_key: must be 32 hexadecimal"),
    (
        "key_short",
        f'node_id = "a"\nnetwork_key = "{NETWORK_KEY[:-2]}"\n',
        "network_key: must be 32 hexadecimal",
    ),
    ("key_long", f'node_id = "a"\nnetwork_key = "{NETWORK_KEY}00"\n', "network_key: must be 32 hexadecimal"),
    (
        "memory_zero",
        'node_id = "a"\n[[layer_models]]\nmodel_id = "m"\nmemory = 0\n',
        "layer_models[0].memory: must be greater than 0",
    ),
    (
        "memory_negative",
        'node_id = "a"\n[[layer_models]]\nmodel_id = "m"\nmemory = -1.5\n',
        "layer_models[0].memory: must be greater than 0",
    ),
    ("missing_node_id", "job_port = 8000\n", "node_id: required key is missing"),
    ("empty_node_id", 'node_id = ""\n', "node_id: must not be empty"),
    (
        "bad_device",
        'node_id = "a"\n[[layer_models]]\nmodel_id = "m"\nmemory = 1\ndevice = "gpu"\n',
        "layer_models[0].device: must be",
    ),
    (
        "bad_end_device",
        'node_id = "a"\nend_models = [{model_id = "m", device = "cuda:x"}]\n',
        "end_models[0].device: must be",
    ),
    (
        "bad_data_type",
        'node_id = "a"\n[[layer_models]]\nmodel_id = "m"\nmemory = 1\ndata_type = "int3"\n',
        "layer_models[0].data_type: must be one of",
    ),
    ("bad_log_level", 'node_id = "a"\nlog_level = "trace"\n', "log_level: must be one of"),
    (
        "bootstrap_port",
        'node_id = "a"\n[[bootstrap_nodes]]\naddress = "10.0.0.2"\nport = 99999\n',
        "bootstrap_nodes[0].port: must be between 1 and 65535",
    ),
    (
        "bad_ip",
        'node_id = "a"\nnetwork_ip = "999.1.1.1"\n',
        "network_ip: must be an IP address or a host name",
    ),
    ("zero_jobs", 'node_id = "a"\nmax_node_jobs = 0\n', "max_node_jobs: must be at least 1"),
    ("end_model_number", 'node_id = "a"\nend_models = [7]\n', "end_models[0]: must be a model id string"),
    ("model_source", 'node_id = "a"\nmodel_source = "torrent"\n', "model_source: must be one of"),
    (
        "manifest_sha256",
        'node_id = "a"\nend_models = [{model_id = "m", manifest_sha256 = "abc"}]\n',
        "end_models[0].manifest_sha256: must be 64 hexadecimal",
    ),
    ("serve_rate", 'node_id = "a"\nweights_serve_bytes_per_s = -1\n', "weights_serve_bytes_per_s: must be"),
]


@pytest.fixture(autouse=True)
def isolated_app_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    app_dir = tmp_path / "app"
    monkeypatch.setenv("LP_APP_DIR", str(app_dir))
    monkeypatch.delenv("LP_TORCH_THREADS", raising=False)
    return app_dir


def write(tmp_path: Path, text: str, name: str = "config.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(("case", "text", "expected"), BAD_CONFIGS, ids=[case[0] for case in BAD_CONFIGS])
def test_bad_config_is_one_line_naming_the_key(tmp_path: Path, case: str, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as raised:
        load_config(str(path))
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    assert expected in message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.toml: missing file$"):
        load_config(str(tmp_path / "nope.toml"))


def test_directory_is_not_a_config(tmp_path: Path) -> None:
    (tmp_path / "folder.toml").mkdir()
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(str(tmp_path / "folder.toml"))


def test_unknown_key_suggests_the_close_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'jb_port' \(did you mean 'job_port'\?\)"):
        load_config(str(write(tmp_path, 'node_id = "a"\njb_port = 1\n')))


def test_network_key_error_never_echoes_the_value(tmp_path: Path) -> None:
    secret = "0123456789abcdef0123456789abcdeZ"
    with pytest.raises(ConfigError) as raised:
        load_config(str(write(tmp_path, f'node_id = "a"\nnetwork_key = "{secret}"\n')))
    assert secret not in str(raised.value)


def test_several_problems_report_the_first_and_count_the_rest() -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config({"node_id": 5, "peer_port": 0, "job_port": "x"}, source="c.toml")
    assert str(raised.value) == "c.toml: node_id: must be a string (got 5) (and 2 more problems)"


def test_defaults(tmp_path: Path) -> None:
    config = load_config(str(write(tmp_path, 'node_id = "node-1"\n')))
    assert config.node_id == "node-1"
    assert config.job_port is None
    assert config.api_keys == ()
    assert (config.max_api_jobs, config.max_node_jobs, config.peer_port) == (5, 10, 5000)
    assert config.lane_port is None  # any free port, announced by gossip
    assert config.network_ip == "127.0.0.1"
    assert config.network_key is None
    assert config.whitelist_node_ids == ()
    assert config.bootstrap_nodes == config.layer_models == config.end_models == ()
    assert config.torch_threads == len(os.sched_getaffinity(0))
    assert config.log_level == "info"
    assert (config.model_source, config.weights_serve_bytes_per_s, config.weights_serve_concurrency) == (
        "auto",
        50_000_000,
        4,
    )


def test_a_model_may_choose_its_source_and_pin_its_manifest(tmp_path: Path) -> None:
    digest = "AB" * 32
    text = 'node_id = "a"\n[[layer_models]]\nmodel_id = "m"\nmemory = 1\nmodel_source = "peers"\n'
    text += f'manifest_sha256 = "{digest}"\n'
    layer = load_config(str(write(tmp_path, text))).layer_models[0]
    assert (layer.model_source, layer.manifest_sha256) == ("peers", digest.lower())


def test_full_config(tmp_path: Path) -> None:
    text = f"""
node_id = "node-1"
job_port = 8000
api_keys = ["foo", "bar"]
max_api_jobs = 2
max_node_jobs = 3
peer_port = 5001
network_ip = "my-host.example"
network_key = "{NETWORK_KEY.upper()}"
whitelist_node_ids = ["node-2"]
torch_threads = 1
log_level = "debug"

[[bootstrap_nodes]]
address = "10.0.0.2"
port = 5000

[[layer_models]]
model_id = "HuggingFaceTB/SmolLM2-135M-Instruct"
device = "cuda:1"
memory = 2
data_type = "float32"
"""
    config = load_config(str(write(tmp_path, text)))
    assert config.job_port == 8000 and config.api_keys == ("foo", "bar")
    assert config.network_key == NETWORK_KEY
    assert config.bootstrap_nodes[0].address == "10.0.0.2" and config.bootstrap_nodes[0].port == 5000
    layer = config.layer_models[0]
    assert (layer.device, layer.memory, layer.data_type) == ("cuda:1", 2.0, "float32")
    assert isinstance(layer.memory, float)
    assert config.torch_threads == 1 and config.log_level == "debug"


def test_end_models_strings_and_tables_normalise_to_tables(tmp_path: Path) -> None:
    text = (
        'node_id = "a"\n'
        'end_models = ["org/one", {model_id = "org/two", num_local_layers = 0, device = "mps"}]\n'
    )
    config = load_config(str(write(tmp_path, text)))
    assert config.end_models == (
        EndModelConfig(model_id="org/one", num_local_layers=1, device="cpu"),
        EndModelConfig(model_id="org/two", num_local_layers=0, device="mps"),
    )


def test_config_is_frozen(tmp_path: Path) -> None:
    config = load_config(str(write(tmp_path, 'node_id = "a"\n')))
    with pytest.raises(ValueError, match="frozen"):
        config.job_port = 9000  # type: ignore[misc]


def test_torch_threads_default_comes_from_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LP_TORCH_THREADS", "1")
    assert load_config(str(write(tmp_path, 'node_id = "a"\n'))).torch_threads == 1
    assert load_config(str(write(tmp_path, 'node_id = "a"\ntorch_threads = 3\n'))).torch_threads == 3
    monkeypatch.setenv("LP_TORCH_THREADS", "zero")
    with pytest.raises(ConfigError, match="LP_TORCH_THREADS must be a whole number"):
        load_config(str(write(tmp_path, 'node_id = "a"\n')))


def test_saved_name_resolves_under_app_dir(isolated_app_dir: Path) -> None:
    saved = paths.configs_dir() / "demo.toml"
    assert saved == isolated_app_dir / "configs" / "demo.toml"
    saved.parent.mkdir(parents=True)
    saved.write_text('node_id = "saved-node"\n', encoding="utf-8")
    assert resolve_config_path("demo") == saved
    assert load_config("demo").node_id == "saved-node"


def test_missing_saved_name_says_so(isolated_app_dir: Path) -> None:
    with pytest.raises(ConfigError, match=r"demo\.toml: missing file \(no saved config named 'demo'\)"):
        load_config("demo")


def test_path_without_toml_is_rejected() -> None:
    with pytest.raises(ConfigError, match="ending in .toml"):
        resolve_config_path("some/dir/config")


def test_paths_read_environment_at_call_time(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LP_MODEL_DIR", str(tmp_path / "models"))
    assert paths.model_dir() == tmp_path / "models"
    monkeypatch.delenv("LP_MODEL_DIR")
    assert paths.model_dir() == Path("~/.cache/language_pipes/models").expanduser()
    monkeypatch.delenv("LP_APP_DIR")
    assert paths.app_dir() == Path("~/.config/language_pipes").expanduser()
    assert paths.credentials_dir() == paths.app_dir() / "credentials"
    assert paths.logs_dir() == paths.app_dir() / "logs"


def test_report_shortens_secrets() -> None:
    config = NodeConfig(
        node_id="a",
        job_port=8000,
        api_keys=("foo", "secret-key-two"),
        network_key=NETWORK_KEY,
        end_models=("org/model",),
    )
    report = config_report(config)
    assert NETWORK_KEY not in report and "ab12…ef90" in report
    assert "foo" not in report and "secret-key-two" not in report and "fo…, se…" in report
    assert "8000" in report and "org/model" in report and "num_local_layers=1" in report


def test_save_config_round_trips(tmp_path: Path) -> None:
    original = NodeConfig(node_id="a", job_port=8000, end_models=("org/model",), network_key=NETWORK_KEY)
    path = tmp_path / "saved" / "out.toml"
    save_config(path, original)
    assert load_config(str(path)) == original
    assert "torch_threads" not in path.read_text(encoding="utf-8")


def test_a_top_level_key_after_a_table_header_says_where_it_belongs(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text('node_id = "x"\n[[layer_models]]\nmodel_id = "m"\nmemory = 1\npeer_port = 5001\n')
    with pytest.raises(ConfigError) as error:
        load_config(str(path))
    assert "layer_models[0]: unknown key 'peer_port'" in str(error.value)
    assert "move it above the first [table] or [[table]] header" in str(error.value)


def test_listen_addresses_default_to_this_machine() -> None:
    """A fresh node's API and peer ports are not reachable from other machines until configured."""
    config = NodeConfig(node_id="fresh")
    assert config.api_ip == "127.0.0.1" and config.network_ip == "127.0.0.1" and config.listen_ip is None


def test_a_config_without_network_key_takes_lp_network_key(monkeypatch: pytest.MonkeyPatch) -> None:
    key = "ab" * 16
    monkeypatch.setenv("LP_NETWORK_KEY", key)
    assert parse_config({"node_id": "n"}).network_key == key
    assert parse_config({"node_id": "n", "network_key": "cd" * 16}).network_key == "cd" * 16  # the file wins
    monkeypatch.setenv("LP_NETWORK_KEY", "not-hex")
    with pytest.raises(ConfigError, match=r"LP_NETWORK_KEY.*network_key"):
        parse_config({"node_id": "n"})


def test_saved_configs_are_readable_by_their_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    save_config(path, NodeConfig(node_id="n", network_key="ab" * 16, api_keys=("k",)))
    assert path.stat().st_mode & 0o777 == 0o600


def test_speculation_is_on_by_default_with_six_drafted_tokens_and_can_be_switched_off() -> None:
    config = NodeConfig(node_id="a")
    assert (config.speculation, config.speculation_max_tokens) == (True, 6)
    assert "on, up to 6 drafted tokens per step" in config_report(config)
    on = parse_config({"node_id": "a", "speculation_max_tokens": 3})
    assert (on.speculation, on.speculation_max_tokens) == (True, 3)
    assert "on, up to 3 drafted tokens per step" in config_report(on)
    off = parse_config({"node_id": "a", "speculation": False})
    assert not off.speculation and "speculation" in config_report(off) and "off" in config_report(off)
