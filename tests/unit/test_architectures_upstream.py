"""The architectures added for the upstream release: Ministral 3, Ministral, Mistral, Gemma 4, Qwen3.5.

The split-equivalence checks of tests/unit/test_architectures.py run over these
families too (tiny random float32 models, split into 2 and 3 segments at several
points, give transformers' one-process logits at every step and its greedy tokens).
The multimodal checkpoints these models ship as (mistral3, qwen3_5, gemma4) serve
their text model. Every model_type without
an adapter, and every Gemma 4 feature a split pipe cannot carry, is refused
when the folder is opened, with an error naming it. Qwen3.5's recurrent state:
tests/unit/test_recurrent_state.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import Gemma4TextConfig, GPT2Config
from transformers.integrations.heterogeneity.configuration_utils import AmbiguousGlobalPerLayerAttributeError

from language_pipes.models.architectures import UnsupportedArchitectureError
from language_pipes.models.partial import ModelSource
from support.split_checks import (
    ATOL,
    DECODE_STEPS,
    PROMPT,
)
from support.tiny_models import (
    GEMMA_SLIDING_WINDOW,
    MINISTRAL3_ORIGINAL_CONTEXT,
    UPSTREAM_TINY_FAMILIES,
    TinyFamily,
    build_tiny_model,
    open_split,
    reference_model,
    reference_steps,
    tiny_config,
)

# Rerun under a second CPU kernel family by scripts/test.sh (see README, Tests).
pytestmark = pytest.mark.numerics


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[TinyFamily, Path]:
    root = tmp_path_factory.mktemp("tiny-upstream")
    return {family: build_tiny_model(family, root / family) for family in UPSTREAM_TINY_FAMILIES}


def test_the_tiny_configs_exercise_what_differs() -> None:
    """Each config really has the feature its adapter has to get right."""
    ministral3 = tiny_config("ministral3")
    assert ministral3.rope_parameters["rope_type"] == "yarn"
    # Queries are scaled by 1 + beta * log(1 + position // original context): the tests pass that point.
    assert len(PROMPT) + DECODE_STEPS > 2 * MINISTRAL3_ORIGINAL_CONTEXT
    ministral = tiny_config("ministral")
    assert set(ministral.layer_types) == {"sliding_attention", "full_attention"}
    assert (
        len(PROMPT)
        > GEMMA_SLIDING_WINDOW
        == ministral.sliding_window
        == tiny_config("mistral").sliding_window
    )
    gemma4 = tiny_config("gemma4_text")
    assert "store" in gemma4.kv_sharing_modes  # the layer call must get a shared-KV map
    assert gemma4.attention_k_eq_v and gemma4.rope_parameters["full_attention"]["rope_type"] == "proportional"


def test_each_upstream_family_has_its_adapter(tiny_folders: dict[TinyFamily, Path]) -> None:
    for family, folder in tiny_folders.items():
        assert ModelSource.open(folder).family.name == family


def _write_config(folder: Path, config: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(folder)  # type: ignore[attr-defined]
    return folder


def test_an_unknown_model_type_is_refused_naming_it_and_the_supported_ones(tmp_path: Path) -> None:
    folder = _write_config(tmp_path / "gpt2", GPT2Config(n_layer=2, n_embd=32, n_head=2))
    with pytest.raises(UnsupportedArchitectureError) as refused:
        ModelSource.open(folder)
    message = str(refused.value)
    assert "'gpt2' is not supported" in message
    for supported in ("llama", "qwen3", "qwen3_moe", "gemma3", "gemma4_text", "ministral3", "phi3"):
        assert supported in message


# The multimodal release of each text model: (wrapper model_type, its config class name).
WRAPPERS: dict[TinyFamily, tuple[str, str]] = {
    "ministral3": ("mistral3", "Mistral3Config"),
    "qwen3_5_text": ("qwen3_5", "Qwen3_5Config"),
    "gemma4_text": ("gemma4", "Gemma4Config"),
}


def _as_multimodal_checkpoint(text_folder: Path, folder: Path, family: TinyFamily) -> Path:
    """The text model's tensors under ``model.language_model.``, in a wrapper config (no vision weights)."""
    import transformers
    from safetensors.torch import load_file, save_file

    folder.mkdir(parents=True)
    tensors = load_file(text_folder / "model.safetensors")
    renamed = {name.replace("model.", "model.language_model.", 1): t for name, t in tensors.items()}
    save_file(renamed, folder / "model.safetensors", metadata={"format": "pt"})
    text_config = json.loads((text_folder / "config.json").read_text())
    wrapper_type, config_class = WRAPPERS[family]
    wrapper = getattr(transformers, config_class)(text_config=text_config)
    assert wrapper.model_type == wrapper_type
    wrapper.save_pretrained(folder)
    for tokenizer_file in text_folder.glob("tokenizer*"):
        (folder / tokenizer_file.name).write_bytes(tokenizer_file.read_bytes())
    return folder


@pytest.mark.parametrize("family", list(WRAPPERS))
def test_a_multimodal_checkpoint_serves_its_text_model(
    family: TinyFamily, tiny_folders: dict[TinyFamily, Path], tmp_path: Path
) -> None:
    """Ministral 3, Qwen3.5 and Gemma 4 ship as multimodal checkpoints: split, they equal the text model."""
    folder = _as_multimodal_checkpoint(tiny_folders[family], tmp_path / "wrapped", family)
    source = ModelSource.open(folder)
    assert source.family.name == family and source.config.model_type == family
    assert not source.reader.names_with_prefix("model.language_model.")
    split = open_split(folder, (1, 2, 4), torch.float32)
    reference = reference_model(tiny_folders[family])
    position, feed = 0, list(PROMPT)
    for step, expected in enumerate(reference_steps(reference, PROMPT, 3)):
        got = split.step(["s"], [position], [feed])
        torch.testing.assert_close(got, expected, atol=ATOL, rtol=1e-4, msg=f"{family} step {step}")
        position += len(feed)
        feed = [int(expected[-1].argmax())]


@pytest.mark.parametrize(
    ("feature", "value"), [("hidden_size_per_layer_input", 8), ("num_kv_shared_layers", 2)]
)
def test_gemma4_features_a_split_cannot_carry_are_refused(tmp_path: Path, feature: str, value: int) -> None:
    config = tiny_config("gemma4_text").to_dict()
    config[feature] = value
    folder = _write_config(tmp_path / feature, Gemma4TextConfig(**config))
    with pytest.raises(UnsupportedArchitectureError, match=f"gemma4_text: .*{feature}={value}"):
        ModelSource.open(folder)


def test_kv_bytes_per_token_follow_each_layers_own_key_width(tiny_folders: dict[TinyFamily, Path]) -> None:
    """Gemma 4's config refuses a global head_dim (its layer node never started); Qwen3.5's
    linear-attention layers hold no keys. Placement budgets the widest attention layer."""
    gemma4 = ModelSource.open(tiny_folders["gemma4_text"])
    with pytest.raises(AmbiguousGlobalPerLayerAttributeError):
        _ = gemma4.config.head_dim
    widths = {layer.self_attn.k_proj.out_features for layer in gemma4.skeleton.model.layers}
    assert gemma4.kv_bytes_per_token(torch.float32) == 2 * max(widths) * 4
    qwen = ModelSource.open(tiny_folders["qwen3_5_text"])
    assert qwen.kv_bytes_per_token(torch.bfloat16) == 2 * qwen.config.num_key_value_heads * 16 * 2


def test_layer_nbytes_budget_the_largest_layer(tiny_folders: dict[TinyFamily, Path]) -> None:
    """Qwen3.5's layer 0 is linear attention, Gemma 4's a sliding one: neither is the largest layer."""
    for family in ("qwen3_5_text", "gemma4_text"):
        source = ModelSource.open(tiny_folders[family])
        sizes = [source.reader.stored_nbytes(f"model.layers.{i}.", torch.float32) for i in range(4)]
        assert len(set(sizes)) > 1 and sizes[0] < max(sizes)
        assert source.layer_nbytes(torch.float32) == max(sizes)


@pytest.mark.parametrize("family", ["mistral", "ministral"])
def test_bf16_decode_past_the_sliding_window_equals_transformers_bit_for_bit(
    tiny_folders: dict[TinyFamily, Path], family: TinyFamily
) -> None:
    """Past its window a decode row attends over exactly the last ``window`` keys, as transformers'
    sliding cache does; over the whole history under a mask, bf16 rounded otherwise and greedy
    text parted from transformers' after a dozen tokens."""
    from transformers import AutoModelForCausalLM

    folder = tiny_folders[family]
    ours = open_split(folder, (1, 4), torch.bfloat16)
    reference = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).eval()
    position, feed = 0, list(PROMPT)
    for step, expected in enumerate(reference_steps(reference, PROMPT, 20)):
        got = ours.step(["window"], [position], [feed])
        assert torch.equal(got, expected), f"{family} step {step}"
        position += len(feed)
        feed = [int(expected[-1].argmax())]
    assert position > GEMMA_SLIDING_WINDOW + 20
