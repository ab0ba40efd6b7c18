"""The model store: Hugging Face model ids -> local safetensors folders under ``LP_MODEL_DIR``.

A model is *installed* when its folder holds ``config.json``, tokenizer files and
safetensors weights. Missing models are downloaded from the hub (``HF_ENDPOINT`` is
read at call time) into a hidden sibling folder that is renamed into place only
when complete, so an interrupted download never looks installed and resumes on the
next try. The embedded models (the default one among them) are prepared from their
GGUF wheels with no network at all (see :mod:`language_pipes.models.embedded`). A per-model file lock
keeps two node processes from preparing the same model at once.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import re
import shutil
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import filelock
import httpx2
import tqdm
from huggingface_hub import HfApi, snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from language_pipes.models.embedded import EMBEDDED_MODELS, EmbeddedWheelMissingError, convert_embedded_model
from language_pipes.paths import model_dir

if TYPE_CHECKING:
    from language_pipes.vocabulary import ModelId

logger = logging.getLogger(__name__)

DEFAULT_HUB_ENDPOINT = "https://huggingface.co"

# Everything a node needs besides the weights: config, tokenizer, chat template.
SUPPORT_FILE_PATTERNS: tuple[str, ...] = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)
TOKENIZER_FILES: tuple[str, ...] = ("tokenizer.json", "tokenizer.model", "vocab.json")
SAFETENSORS_INDEX = "model.safetensors.index.json"

# One or two path parts (``org/name`` or ``name``) of hub-legal characters; ``--`` and
# ``..`` are illegal on the hub too, which keeps the folder name reversible and safe.
_MODEL_ID_PATTERN = re.compile(r"^(?:[A-Za-z0-9][\w.\-]{0,95}/)?[A-Za-z0-9][\w.\-]{0,95}$", re.ASCII)
_FOLDER_SEPARATOR = "--"
_DOWNLOAD_PREFIX = ".download-"
_CONVERT_PREFIX = ".convert-"
# Where language_pipes.weights stages a model fetched from peers until its tensors are in.
PEERS_PREFIX = ".peers-"
_LOCK_FOLDER = ".locks"
# huggingface_hub's bar of raw network bytes; the bytes written to the files are reported instead.
_NETWORK_BYTES_BAR = "Downloading bytes"

# Called from download threads, under a lock (keep it quick), with (bytes written, bytes expected or None).
DownloadProgress = Callable[[int, int | None], None]


class ModelStoreError(Exception):
    """A model could not be found, fetched or prepared; the message names the id and the reason."""

    def __init__(self, model_id: str, reason: str) -> None:
        super().__init__(f"model {model_id!r}: {reason}")
        self.model_id = model_id
        self.reason = reason


def validate_model_id(model_id: str) -> ModelId:
    """Return ``model_id`` if it is a safe Hugging Face id, else raise :class:`ModelStoreError`."""
    if (
        not _MODEL_ID_PATTERN.fullmatch(model_id)
        or ".." in model_id
        or _FOLDER_SEPARATOR in model_id
        or model_id.endswith((".", "-"))
    ):
        raise ModelStoreError(
            model_id, "not a valid Hugging Face model id (expected 'org/name' without '..' or '--')"
        )
    return cast("ModelId", model_id)


def hub_endpoint() -> str:
    """The hub to download from: ``HF_ENDPOINT`` at call time, else huggingface.co."""
    return os.environ.get("HF_ENDPOINT", DEFAULT_HUB_ENDPOINT).rstrip("/")


def select_repo_files(model_id: str, repo_files: Iterable[str]) -> list[str]:
    """Pick the files to download: support files plus one copy of the safetensors weights.

    Weights are the top-level ``*.safetensors`` files (sharded with an index, or a
    single file); a Mistral-style ``consolidated.safetensors`` duplicate is skipped
    when regular weights exist. Raises :class:`ModelStoreError` when there are none.
    """
    files = list(repo_files)
    top_level = [name for name in files if "/" not in name]
    support = [name for name in top_level if any(fnmatch.fnmatch(name, p) for p in SUPPORT_FILE_PATTERNS)]
    weights = [name for name in top_level if name.endswith(".safetensors")]
    regular_weights = [name for name in weights if not name.startswith("consolidated")]
    weights = regular_weights or weights
    if not weights:
        other = sorted(name for name in files if name.endswith((".bin", ".pt", ".gguf", ".pth")))
        found = f" (it has {', '.join(other[:4])})" if other else ""
        raise ModelStoreError(model_id, f"the repository has no safetensors weights{found}")
    if "config.json" not in support:
        raise ModelStoreError(model_id, "the repository has no config.json (not a transformers model?)")
    index = [SAFETENSORS_INDEX] if SAFETENSORS_INDEX in top_level else []
    return sorted(set(support + weights + index))


class ModelStore:
    """Local model folders, one per Hugging Face id, under ``root`` (default ``model_dir()``)."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else model_dir()

    # ---- where things live ----

    def local_path(self, model_id: str) -> Path:
        """The folder of ``model_id``: ``root/org--name`` (the hub's own cache naming)."""
        return self.root / validate_model_id(model_id).replace("/", _FOLDER_SEPARATOR)

    def _staging_path(self, prefix: str, model_id: str) -> Path:
        return self.root / f"{prefix}{self.local_path(model_id).name}"

    # ---- queries ----

    def is_installed(self, model_id: str) -> bool:
        """True when the folder has config.json, a tokenizer and all safetensors weights."""
        return is_complete_model_folder(self.local_path(model_id))

    def installed(self) -> list[ModelId]:
        """Ids of every installed model, sorted."""
        if not self.root.is_dir():
            return []
        found: list[ModelId] = []
        for folder in self.root.iterdir():
            if folder.name.startswith(".") or not folder.is_dir():
                continue
            model_id = folder.name.replace(_FOLDER_SEPARATOR, "/", 1)
            if _MODEL_ID_PATTERN.fullmatch(model_id) and is_complete_model_folder(folder):
                found.append(cast("ModelId", model_id))
        return sorted(found)

    # ---- changes ----

    def ensure(self, model_id: str, progress: DownloadProgress | None = None) -> Path:
        """Return the folder of ``model_id``, downloading or converting it first if needed.

        ``progress`` hears how far a download has got (bytes done, bytes expected);
        it is called from download threads under a lock, and not at all for an embedded model.
        """
        path = self.local_path(model_id)
        if is_complete_model_folder(path):
            return path
        with self._lock(model_id):
            if is_complete_model_folder(path):  # another process finished it while we waited
                return path
            if model_id in EMBEDDED_MODELS:
                self._convert_embedded(model_id)
            else:
                self._download(model_id, progress)
        return path

    def delete(self, model_id: str) -> bool:
        """Remove the model's folder and any partial download; True if something was removed."""
        removed = False
        with self._lock(model_id):
            for folder in (
                self.local_path(model_id),
                self._staging_path(_DOWNLOAD_PREFIX, model_id),
                self._staging_path(_CONVERT_PREFIX, model_id),
                self._staging_path(PEERS_PREFIX, model_id),
            ):
                if folder.exists():
                    shutil.rmtree(folder)
                    removed = True
        return removed

    # ---- internals ----

    @contextmanager
    def _lock(self, model_id: str) -> Iterator[None]:
        lock_folder = self.root / _LOCK_FOLDER
        lock_folder.mkdir(parents=True, exist_ok=True)
        lock = filelock.FileLock(str(lock_folder / f"{self.local_path(model_id).name}.lock"))
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            # Another process holds it: say so, then wait for it as long as it takes.
            logger.info("Waiting for another process that is preparing %s", model_id)
            lock.acquire()
        try:
            yield
        finally:
            lock.release()

    def _convert_embedded(self, model_id: str) -> None:
        staging = self._staging_path(_CONVERT_PREFIX, model_id)
        if staging.exists():  # left over from a conversion that was killed
            shutil.rmtree(staging)
        try:
            convert_embedded_model(EMBEDDED_MODELS[model_id], staging)
        except EmbeddedWheelMissingError as error:
            # The wheel is an install-time choice; tell the user exactly how to add it.
            shutil.rmtree(staging, ignore_errors=True)
            raise ModelStoreError(model_id, str(error)) from error
        except BaseException:
            # Any failure (or Ctrl-C) must not leave a half-written folder behind.
            shutil.rmtree(staging, ignore_errors=True)
            raise
        self._move_into_place(model_id, staging)

    def _download(self, model_id: str, progress: DownloadProgress | None = None) -> None:
        endpoint = hub_endpoint()
        staging = self._staging_path(_DOWNLOAD_PREFIX, model_id)
        logger.info("Downloading %s from %s", model_id, endpoint)
        with _hub_errors_as_store_errors(model_id, endpoint):
            info = HfApi(endpoint=endpoint).model_info(model_id, revision="main")
            names = [sibling.rfilename for sibling in info.siblings or []]
            files = select_repo_files(model_id, names)
            # ``staging`` persists between tries so an interrupted download resumes.
            snapshot_download(
                model_id,
                revision=info.sha,
                local_dir=staging,
                cache_dir=staging / ".cache" / "hub",
                allow_patterns=files,
                endpoint=endpoint,
                tqdm_class=reporting_progress_bar(progress) if progress is not None else None,
            )
        missing = [name for name in files if not (staging / name).is_file()]
        if missing:
            raise ModelStoreError(model_id, f"download finished without {', '.join(missing)}")
        shutil.rmtree(staging / ".cache", ignore_errors=True)
        self._move_into_place(model_id, staging)

    def _move_into_place(self, model_id: str, staging: Path) -> None:
        if not is_complete_model_folder(staging):
            shutil.rmtree(staging, ignore_errors=True)
            reason = "the prepared folder is incomplete (missing config, tokenizer or weights)"
            raise ModelStoreError(model_id, reason)
        target = self.local_path(model_id)
        if target.exists():  # an incomplete folder from an older layout or a manual copy
            shutil.rmtree(target)
        os.replace(staging, target)
        logger.info("Installed %s at %s", model_id, target)


def reporting_progress_bar(progress: DownloadProgress) -> type[tqdm.tqdm]:
    """A silent tqdm class for ``snapshot_download`` that forwards the downloaded bytes to ``progress``."""

    class ReportingBar(tqdm.tqdm):  # type: ignore[type-arg]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True  # print nothing: the caller shows progress its own way
            super().__init__(*args, **kwargs)
            description = str(kwargs.get("desc") or "")
            self.reports = kwargs.get("unit") == "B" and not description.startswith(_NETWORK_BYTES_BAR)

        def update(self, n: float | None = 1) -> bool | None:
            # A disabled tqdm counts nothing itself; count and report under the class's shared
            # lock, so reports from concurrent file downloads arrive in order.
            with self.get_lock():
                self.n += n or 0
                if self.reports:
                    progress(int(self.n), int(self.total) if self.total else None)
            return None

    return ReportingBar


def is_complete_model_folder(folder: Path) -> bool:
    """config.json, a tokenizer file and safetensors weights (every shard an index names)."""
    if not (folder / "config.json").is_file():
        return False
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        return False
    index = folder / SAFETENSORS_INDEX
    if index.is_file():
        return all((folder / shard).is_file() for shard in _index_shards(index))
    return any(folder.glob("*.safetensors"))


def _index_shards(index: Path) -> set[str]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError):
        # A corrupt index means the folder cannot be loaded: report one missing shard.
        return {"<unreadable model.safetensors.index.json>"}
    return set(weight_map.values())


@contextmanager
def _hub_errors_as_store_errors(model_id: str, endpoint: str) -> Iterator[None]:
    """Turn huggingface_hub's and httpx's exceptions into one :class:`ModelStoreError` each."""
    try:
        yield
    except GatedRepoError as error:
        # Checked before RepositoryNotFoundError, its base class.
        raise ModelStoreError(
            model_id, "is gated on the hub: accept its license and set HF_TOKEN, then retry"
        ) from error
    except RepositoryNotFoundError as error:
        raise ModelStoreError(model_id, f"not found on the hub at {endpoint} (or private)") from error
    except RevisionNotFoundError as error:
        raise ModelStoreError(model_id, f"the hub at {endpoint} has no 'main' revision of it") from error
    except OfflineModeIsEnabled as error:
        raise ModelStoreError(model_id, "not installed and HF_HUB_OFFLINE forbids downloading it") from error
    except HfHubHTTPError as error:
        # Any other HTTP status: a plain 404 is still "not found", the rest is the hub's fault.
        status = error.response.status_code
        if status == 404:
            raise ModelStoreError(model_id, f"not found on the hub at {endpoint}") from error
        raise ModelStoreError(model_id, f"the hub at {endpoint} answered HTTP {status}") from error
    except (LocalEntryNotFoundError, httpx2.ConnectError, httpx2.TimeoutException) as error:
        # snapshot_download reports a failed connection as LocalEntryNotFoundError.
        reason = f"cannot download it: no connection to the hub at {endpoint} ({error.__class__.__name__})"
        raise ModelStoreError(model_id, reason) from error
    except httpx2.TransportError as error:
        # The connection broke mid-transfer (after huggingface_hub's own retries).
        reason = f"the download from {endpoint} broke off ({error}); run again to continue"
        raise ModelStoreError(model_id, reason) from error
