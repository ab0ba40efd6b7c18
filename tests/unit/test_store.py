"""The model store's download path, against a real local HTTP server that speaks the hub's API.

The fake hub implements the endpoints ``huggingface_hub.snapshot_download`` uses
(model info, recursive tree listing, HEAD/GET ``resolve`` with ``X-Repo-Commit``,
``ETag``, ``Content-Length`` and byte ranges) and serves a tiny randomly
initialised Llama model with a real tokenizer.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import torch

from language_pipes.models.store import ModelStore, ModelStoreError, select_repo_files, validate_model_id

TINY_REPO = "tiny-org/tiny-llama"
BIN_ONLY_REPO = "tiny-org/pickle-only"
UNWANTED_FILES = ("pytorch_model.bin", "README.md", "onnx/model.onnx")


@dataclass
class FakeRepo:
    files: dict[str, bytes]
    commit: str = field(default_factory=lambda: hashlib.sha1(b"commit").hexdigest())


@dataclass
class RecordedRequest:
    method: str
    path: str
    range: str | None


class FakeHub:
    """A threaded HTTP server answering like huggingface.co for a few in-memory repositories."""

    def __init__(self, repos: dict[str, FakeRepo]) -> None:
        self.repos = repos
        self.requests: list[RecordedRequest] = []
        self.cut_file: str | None = None  # the first GET of this file stops halfway, later ones get 503
        self.cut_done = False
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def file_gets(self) -> list[str]:
        downloads = [r.path for r in self.requests if r.method == "GET" and "/resolve/" in r.path]
        return [path.rsplit("/", 1)[-1] for path in downloads]

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


_REVISION = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/revision/(?P<rev>[^/]+)$")
_TREE = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/tree/(?P<rev>[^/]+)$")
_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)$")


def _make_handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class HubHandler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass  # keep the test output clean

        def do_HEAD(self) -> None:
            self._answer(send_body=False)

        def do_GET(self) -> None:
            self._answer(send_body=True)

        def _answer(self, send_body: bool) -> None:
            path = unquote(urlsplit(self.path).path)
            hub.record(RecordedRequest(self.command, path, self.headers.get("Range")))
            routes = ((_REVISION, self._model_info), (_TREE, self._tree), (_RESOLVE, self._file))
            for pattern, answer in routes:
                match = pattern.match(path)
                if match:
                    repo = hub.repos.get(match["repo"])
                    if repo is None:
                        error_code = {"X-Error-Code": "RepoNotFound"}
                        self._send_json({"error": "Repository not found"}, 404, error_code)
                        return
                    answer(repo, match, send_body)
                    return
            self._send_json({"error": "no such route"}, 404)

        def _model_info(self, repo: FakeRepo, match: re.Match[str], send_body: bool) -> None:
            siblings = [{"rfilename": name} for name in repo.files]
            self._send_json({"id": match["repo"], "sha": repo.commit, "siblings": siblings}, 200)

        def _tree(self, repo: FakeRepo, match: re.Match[str], send_body: bool) -> None:
            entries = []
            for name, data in repo.files.items():
                size = len(data)
                entry: dict[str, object] = {"type": "file", "path": name, "size": size, "oid": _git_oid(data)}
                if name.endswith(".safetensors"):
                    entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": size, "pointerSize": 134}
                entries.append(entry)
            self._send_json(entries, 200)

        def _file(self, repo: FakeRepo, match: re.Match[str], send_body: bool) -> None:
            name = match["file"]
            data = repo.files.get(name)
            if data is None:
                self._send_json({"error": "Entry not found"}, 404, {"X-Error-Code": "EntryNotFound"})
                return
            etag = hashlib.sha256(data).hexdigest() if name.endswith(".safetensors") else _git_oid(data)
            headers = {"X-Repo-Commit": repo.commit, "ETag": f'"{etag}"', "Accept-Ranges": "bytes"}
            requested_range = self.headers.get("Range")
            cut = send_body and hub.cut_file == name
            if cut and hub.cut_done:
                self._send_json({"error": "hub went away"}, 503)
                return
            status, start = 200, 0
            if requested_range and send_body:
                start = int(requested_range.removeprefix("bytes=").split("-")[0])
                status = 206
                headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            body = data[start:]
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not send_body:
                return
            if cut:
                hub.cut_done = True
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
                return
            self.wfile.write(body)

        def _send_json(self, payload: object, status: int, extra: dict[str, str] | None = None) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for key, value in (extra or {}).items():
                self.send_header(key, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

    return HubHandler


def _git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _build_tiny_model_files(folder: Path) -> dict[str, bytes]:
    """A 2-layer random Llama in two safetensors shards, with a real (tiny) tokenizer and chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = ["<unk>", "<|im_start|>", "<|im_end|>", "hello", "world", "user", "assistant", "\n"]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="<|im_end|>")
    tokenizer.chat_template = "{% for m in messages %}<|im_start|> {{ m['content'] }} <|im_end|> {% endfor %}"

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(words),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    LlamaForCausalLM(config).save_pretrained(folder, max_shard_size="100KB")
    tokenizer.save_pretrained(folder)
    files = {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert sum(name.endswith(".safetensors") for name in files) >= 2, "expected a sharded checkpoint"
    files["pytorch_model.bin"] = b"pickled weights we must not fetch"
    files["README.md"] = b"# tiny llama\n"
    files["onnx/model.onnx"] = b"onnx bytes"
    return files


@pytest.fixture(scope="module")
def tiny_model_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    return _build_tiny_model_files(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture
def hub(tiny_model_files: dict[str, bytes], monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    repos = {
        TINY_REPO: FakeRepo(dict(tiny_model_files)),
        BIN_ONLY_REPO: FakeRepo({"config.json": b"{}", "pytorch_model.bin": b"weights"}),
    }
    with FakeHub(repos) as running_hub:
        monkeypatch.setenv("HF_ENDPOINT", running_hub.url)
        monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
        yield running_hub


def _expected_files(files: dict[str, bytes]) -> dict[str, bytes]:
    return {name: data for name, data in files.items() if name not in UNWANTED_FILES}


def _folder_files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_download_installs_exact_files_and_second_ensure_is_offline(hub: FakeHub, tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    assert not store.is_installed(TINY_REPO)

    path = store.ensure(TINY_REPO)

    assert path == tmp_path / "models" / "tiny-org--tiny-llama"
    assert store.is_installed(TINY_REPO)
    assert store.installed() == [TINY_REPO]
    assert _folder_files(path) == _expected_files(hub.repos[TINY_REPO].files)
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == [".locks", "tiny-org--tiny-llama"]

    requests_before = len(hub.requests)
    assert store.ensure(TINY_REPO) == path
    assert len(hub.requests) == requests_before, "an installed model must not touch the network"


def test_download_reports_its_progress_in_bytes(hub: FakeHub, tmp_path: Path) -> None:
    expected = sum(len(data) for data in _expected_files(hub.repos[TINY_REPO].files).values())
    reports: list[tuple[int, int | None]] = []
    lock = threading.Lock()

    def record(done: int, total: int | None) -> None:
        with lock:  # download threads call it concurrently
            reports.append((done, total))

    ModelStore(tmp_path / "models").ensure(TINY_REPO, progress=record)

    assert len(reports) >= 3, reports
    done = [report[0] for report in reports]
    assert done == sorted(done), "bytes done only grow"
    assert all(total is not None and 0 < d <= total <= expected for d, total in reports)
    assert reports[-1] == (expected, expected), "the last report is the whole download"

    reports.clear()
    ModelStore(tmp_path / "models").ensure(TINY_REPO, progress=record)
    assert reports == [], "an installed model downloads nothing, so nothing is reported"


def test_downloaded_model_loads_with_transformers(hub: FakeHub, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    path = ModelStore(tmp_path).ensure(TINY_REPO)
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    ids = tokenizer("hello world", return_tensors="pt").input_ids
    assert ids.tolist() == [[3, 4]]
    assert model(ids).logits.shape == (1, 2, 8)
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "hello"}], tokenize=False)
    assert rendered == "<|im_start|> hello <|im_end|> "


def test_missing_repo_names_the_id(hub: FakeHub, tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    with pytest.raises(ModelStoreError, match="tiny-org/no-such-model.*not found on the hub") as caught:
        store.ensure("tiny-org/no-such-model")
    assert caught.value.model_id == "tiny-org/no-such-model"
    assert store.installed() == []


def test_repo_without_safetensors_is_refused_before_downloading(hub: FakeHub, tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    with pytest.raises(ModelStoreError, match="pickle-only.*no safetensors weights.*pytorch_model.bin"):
        store.ensure(BIN_ONLY_REPO)
    assert hub.file_gets() == []
    assert not store.local_path(BIN_ONLY_REPO).exists()


def test_unreachable_hub_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as probe:  # a port with nothing listening on it
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port}")
    with pytest.raises(ModelStoreError, match="tiny-org/tiny-llama.*no connection to the hub"):
        ModelStore(tmp_path).ensure(TINY_REPO)


def test_interrupted_download_never_looks_installed_and_retry_finishes(hub: FakeHub, tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    shard = sorted(n for n in hub.repos[TINY_REPO].files if n.endswith(".safetensors"))[0]
    hub.cut_file = shard

    with pytest.raises(ModelStoreError, match="tiny-org/tiny-llama.*HTTP 503"):
        store.ensure(TINY_REPO)

    assert not store.is_installed(TINY_REPO)
    assert not store.local_path(TINY_REPO).exists()
    assert store.installed() == []
    assert shard in hub.file_gets()

    hub.cut_file = None
    hub.requests.clear()
    assert (tmp_path / "models" / ".download-tiny-org--tiny-llama").is_dir(), "kept to resume from"
    path = store.ensure(TINY_REPO)
    assert _folder_files(path) == _expected_files(hub.repos[TINY_REPO].files)
    assert "config.json" not in hub.file_gets(), "files finished before the cut are not fetched again"
    assert shard in hub.file_gets()


def test_delete_removes_the_model(hub: FakeHub, tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    store.ensure(TINY_REPO)
    assert store.delete(TINY_REPO) is True
    assert not store.is_installed(TINY_REPO)
    assert store.installed() == []
    assert store.delete(TINY_REPO) is False


def test_root_defaults_to_lp_model_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LP_MODEL_DIR", str(tmp_path / "elsewhere"))
    assert ModelStore().local_path("Qwen/Qwen3-1.7B") == tmp_path / "elsewhere" / "Qwen--Qwen3-1.7B"


@pytest.mark.parametrize(
    "bad_id", ["../etc", "/abs/path", "org/../x", "a/b/c", "org--x/y", "", "org/", "org/name.", "x\\y"]
)
def test_unsafe_model_ids_are_rejected(bad_id: str, tmp_path: Path) -> None:
    with pytest.raises(ModelStoreError, match="not a valid Hugging Face model id"):
        ModelStore(tmp_path).local_path(bad_id)


def test_valid_model_ids_are_accepted() -> None:
    for good in ("Qwen/Qwen3-1.7B", "gpt2", "HuggingFaceTB/SmolLM2-135M-Instruct", "google/gemma-3-270m-it"):
        assert validate_model_id(good) == good


def test_file_selection_prefers_regular_shards_over_consolidated() -> None:
    repo = [
        "config.json",
        "tokenizer.json",
        "consolidated.safetensors",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
        "original/params.safetensors",
        "README.md",
    ]
    assert select_repo_files("m/x", repo) == [
        "config.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
        "tokenizer.json",
    ]


def test_folder_missing_a_shard_is_not_installed(tmp_path: Path) -> None:
    folder = tmp_path / "org--model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "tokenizer.json").write_text("{}")
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    (folder / "model-00001-of-00002.safetensors").write_bytes(b"x")
    store = ModelStore(tmp_path)
    assert not store.is_installed("org/model")
    (folder / "model-00002-of-00002.safetensors").write_bytes(b"x")
    assert store.is_installed("org/model")
    assert store.installed() == ["org/model"]
