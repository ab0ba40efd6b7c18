"""The TUI's config editing: same validation and messages as the config file, comments kept."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from language_pipes.config import ConfigError, load_config
from language_pipes.tui.config_document import (
    ConfigDocument,
    check_config_name,
    create_config,
    delete_config,
    restart_needed_for,
    saved_config_names,
)

HAND_WRITTEN = """\
# my office node
node_id = "office"  # the name peers see

# the API
job_port = 8000

[[layer_models]]
model_id = "org/model"  # big one
memory = 4
"""


@pytest.fixture(autouse=True)
def app_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LP_APP_DIR", str(tmp_path / "app"))
    return tmp_path / "app"


def write(tmp_path: Path, text: str = HAND_WRITTEN) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(text)
    return path


def test_an_edit_keeps_comments_and_layout(tmp_path: Path) -> None:
    path = write(tmp_path)
    ConfigDocument(path).update({"job_port": 9000, "api_keys": ["k1"]})
    text = path.read_text()
    assert text.startswith('# my office node\nnode_id = "office"  # the name peers see\n')
    assert "# the API\njob_port = 9000\n" in text
    assert 'model_id = "org/model"  # big one' in text
    assert text.index("api_keys") < text.index("[[layer_models]]")  # still a top-level key
    assert load_config(str(path)).api_keys == ("k1",)


def test_a_rejected_edit_gives_the_config_file_message_and_saves_nothing(tmp_path: Path) -> None:
    path = write(tmp_path)
    with pytest.raises(ConfigError) as from_ui:
        ConfigDocument(path).update({"peer_port": 70000})
    assert str(from_ui.value) == "node.toml: peer_port: must be between 1 and 65535 (got 70000)"
    assert path.read_text() == HAND_WRITTEN
    write(tmp_path, HAND_WRITTEN.replace("job_port = 8000", "job_port = 8000\npeer_port = 70000"))
    with pytest.raises(ConfigError) as from_file:
        load_config(str(path))
    assert str(from_file.value).split(": ", 1)[1] == str(from_ui.value).split(": ", 1)[1]


def test_wrong_types_are_named_like_the_file_would_name_them(tmp_path: Path) -> None:
    document = ConfigDocument(write(tmp_path))
    with pytest.raises(ConfigError, match=r"job_port: must be an integer \(got \"abc\"\)"):
        document.update({"job_port": "abc"})
    with pytest.raises(ConfigError, match=r"layer_models\[1\]\.memory: must be greater than 0"):
        broken = {"model_id": "a/b", "memory": -1.0}
        document.update({"layer_models": [*document.get("layer_models"), broken]})


def test_secrets_are_not_echoed_in_messages(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        ConfigDocument(write(tmp_path)).update({"network_key": "not-hex-secret"})
    assert "not-hex-secret" not in str(error.value)
    assert "network_key: must be 32 hexadecimal characters" in str(error.value)


def test_a_new_configuration_accepts_edits_before_it_is_complete(app_dir: Path) -> None:
    path = create_config("fresh")
    assert path == app_dir / "configs" / "fresh.toml"
    document = ConfigDocument(path)
    assert document.problems() == ["node_id: required key is missing"]
    document.update({"job_port": 8123})  # node_id is still missing: not this edit's problem
    with pytest.raises(ConfigError, match="node_id: must not be empty"):
        document.update({"node_id": "   "})
    document.update({"node_id": "fresh-node"})
    assert document.problems() == []
    assert document.config().job_port == 8123
    assert tomllib.loads(path.read_text()) == {"job_port": 8123, "node_id": "fresh-node"}


def test_lists_of_tables_and_end_models_are_written_as_toml_people_write(tmp_path: Path) -> None:
    path = write(tmp_path)
    document = ConfigDocument(path)
    document.update(
        {
            "end_models": [{"model_id": "org/a"}, {"model_id": "org/b", "num_local_layers": 2}],
            "bootstrap_nodes": [{"address": "10.0.0.2", "port": 5000}],
        }
    )
    text = path.read_text()
    assert 'end_models = ["org/a", {model_id = "org/b", num_local_layers = 2}]' in text
    assert "[[bootstrap_nodes]]" in text
    config = load_config(str(path))
    assert [m.model_id for m in config.end_models] == ["org/a", "org/b"]
    assert config.bootstrap_nodes[0].port == 5000


def test_none_removes_a_key(tmp_path: Path) -> None:
    path = write(tmp_path)
    ConfigDocument(path).update({"job_port": None})
    assert "job_port" not in tomllib.loads(path.read_text())
    assert "# my office node" in path.read_text()


def test_saved_configurations_are_listed_created_and_deleted() -> None:
    assert saved_config_names() == []
    create_config("b-node")
    create_config("a-node")
    assert saved_config_names() == ["a-node", "b-node"]
    with pytest.raises(ConfigError, match="already exists"):
        create_config("a-node")
    delete_config("a-node")
    assert saved_config_names() == ["b-node"]


@pytest.mark.parametrize("name", ["", "../escape", "with space", "x.toml", "-dash"])
def test_bad_configuration_names_are_refused(name: str) -> None:
    with pytest.raises(ConfigError):
        check_config_name(name)


def test_which_edits_need_a_restart() -> None:
    assert restart_needed_for({"node_id"}) == (True, False)
    assert restart_needed_for({"api_keys"}) == (False, True)
    assert restart_needed_for({"log_level"}) == (False, False)


def test_a_hand_broken_file_is_reported_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="node.toml: TOML syntax error"):
        ConfigDocument(write(tmp_path, "node_id = \n"))


def test_configs_holding_keys_are_readable_by_their_owner_only(tmp_path: Path) -> None:
    created = create_config("private")
    assert created.stat().st_mode & 0o777 == 0o600
    path = write(tmp_path)
    path.chmod(0o644)  # a hand-written file, world-readable
    ConfigDocument(path).update({"network_key": "ab" * 16, "api_keys": ["secret"]})
    assert path.stat().st_mode & 0o777 == 0o600
