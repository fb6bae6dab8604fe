"""The object store behaves the same on a local directory and on S3 spoken over real HTTP.

Every behaviour test runs once per backend (the `store` fixture); the S3 runs talk to a moto
server on loopback and are marked `integration`.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import subprocess
import sys
import tracemalloc
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from gpu_runner.storage import (
    InvalidKey,
    LocalObjectStore,
    ObjectInfo,
    ObjectNotFound,
    ObjectStore,
    ObjectTooLarge,
    S3ObjectStore,
    StorageError,
    StoredObject,
    open_store,
)
from tests.s3server import TEST_CREDENTIALS

if TYPE_CHECKING:
    from tests.gpu_runner.conftest import StoreBackend

MiB = 1024 * 1024
PART_SIZE = 8 * MiB


class GeneratedStream(io.RawIOBase):
    """Deterministic pseudo-random bytes made on demand, at most 1 MiB per read.

    The whole object never exists in the test either, so memory measured during an upload is the
    store's, and the short reads exercise streams that do not fill a buffer in one call (sockets,
    request bodies).
    """

    def __init__(self, size: int, *, seed: int = 0) -> None:
        self._remaining = size
        self._random = random.Random(seed)
        self.sha256 = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        count = min(len(buffer), self._remaining, MiB)
        data = self._random.randbytes(count)
        buffer[:count] = data
        self.sha256.update(data)
        self._remaining -= count
        return count


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def hash_reader(reader: Any) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    while chunk := reader.read(MiB):
        digest.update(chunk)
        size += len(chunk)
    return size, digest.hexdigest()


# -- behaviour, once per backend --------------------------------------------------------------


def test_round_trip_keeps_bytes_size_and_digest(store: ObjectStore) -> None:
    data = b'{"messages": [{"role": "user", "content": "hi"}]}\n' * 100

    stored = store.put_bytes("files/file-abc.jsonl", data)

    assert stored == StoredObject(key="files/file-abc.jsonl", size=len(data), sha256=sha256_hex(data))
    assert store.get_bytes("files/file-abc.jsonl") == data
    with store.open("files/file-abc.jsonl") as reader:
        assert reader.read(10) == data[:10]
        assert reader.read() == data[10:]
    assert store.exists("files/file-abc.jsonl")
    assert store.size("files/file-abc.jsonl") == len(data)
    assert store.sha256("files/file-abc.jsonl") == sha256_hex(data)


def test_put_replaces_an_existing_object(store: ObjectStore) -> None:
    store.put_bytes("adapter/config.json", b"old")
    store.put_bytes("adapter/config.json", b"newer", content_type="application/json")

    assert store.get_bytes("adapter/config.json") == b"newer"
    assert store.sha256("adapter/config.json") == sha256_hex(b"newer")
    assert [info.key for info in store.list()] == ["adapter/config.json"]


def test_empty_object(store: ObjectStore, tmp_path: Path) -> None:
    assert store.put_bytes("empty", b"") == StoredObject("empty", 0, sha256_hex(b""))
    assert store.get_bytes("empty") == b""
    assert store.download("empty", tmp_path / "empty").read_bytes() == b""


def test_large_put_streams_in_parts_and_records_digest(store_backend: StoreBackend) -> None:
    store = store_backend.store
    size = 20 * MiB + 12345  # three parts, the last a short one
    stream = GeneratedStream(size, seed=1)

    with store_backend.count_requests() as requests:
        tracemalloc.start()
        try:
            stored = store.put("checkpoints/step-100/optimizer.pt", stream)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()

    assert stored == StoredObject("checkpoints/step-100/optimizer.pt", size, stream.sha256.hexdigest())
    # At most one part (8 MiB) is held, never the 20 MiB object.
    assert peak < PART_SIZE + 4 * MiB, f"peak traced memory {peak / MiB:.1f} MiB"
    if store_backend.name == "s3":
        assert requests["CreateMultipartUpload"] == 1
        assert requests["UploadPart"] == 3
        assert requests["CompleteMultipartUpload"] == 1
        assert requests["PutObject"] == 0
    assert store_backend.pending_uploads() == []
    # The digest was recorded with the object, so sha256() need not read 20 MiB back.
    assert store_backend.recorded_sha256("checkpoints/step-100/optimizer.pt") == stream.sha256.hexdigest()
    with store_backend.count_requests() as requests:
        assert store.sha256("checkpoints/step-100/optimizer.pt") == stream.sha256.hexdigest()
    assert requests["GetObject"] == 0
    assert store.size("checkpoints/step-100/optimizer.pt") == size
    with store.open("checkpoints/step-100/optimizer.pt") as reader:
        assert hash_reader(reader) == (size, stream.sha256.hexdigest())


def test_small_put_is_a_single_request(store_backend: StoreBackend) -> None:
    with store_backend.count_requests() as requests:
        store_backend.store.put("small.bin", GeneratedStream(PART_SIZE - 1))
    if store_backend.name == "s3":
        assert requests["PutObject"] == 1
        assert requests["CreateMultipartUpload"] == 0
    assert store_backend.store.size("small.bin") == PART_SIZE - 1


@pytest.mark.parametrize(
    ("size", "max_bytes"),
    [(3 * MiB, MiB), (20 * MiB, 12 * MiB)],
    ids=["refused-within-first-part", "refused-during-multipart-upload"],
)
def test_upload_over_max_bytes_leaves_nothing(store_backend: StoreBackend, size: int, max_bytes: int) -> None:
    store = store_backend.store

    with pytest.raises(ObjectTooLarge) as refused:
        store.put("files/too-big.jsonl", GeneratedStream(size), max_bytes=max_bytes)

    assert refused.value.max_bytes == max_bytes
    assert "files/too-big.jsonl" in str(refused.value)
    assert list(store.list()) == []
    assert store_backend.raw_names() == []  # no temporary file, no object
    assert store_backend.pending_uploads() == []  # the multipart upload was aborted


def test_refused_upload_keeps_the_previous_object(store_backend: StoreBackend) -> None:
    store = store_backend.store
    store.put_bytes("model.safetensors", b"previous")

    with pytest.raises(ObjectTooLarge):
        store.put("model.safetensors", GeneratedStream(2 * MiB), max_bytes=MiB)

    assert store.get_bytes("model.safetensors") == b"previous"
    assert store.sha256("model.safetensors") == sha256_hex(b"previous")
    assert store_backend.raw_names() == ["root/model.safetensors"]


def test_upload_of_exactly_max_bytes_is_accepted(store: ObjectStore) -> None:
    stored = store.put("exact.bin", io.BytesIO(b"x" * 1000), max_bytes=1000)
    assert stored.size == 1000


def test_list_is_recursive_sorted_and_folder_scoped(store: ObjectStore) -> None:
    for key in ["runs/10/metrics.csv", "a0", "runs/1/events.jsonl", "a/c", "a-b", "runs/1/ckpt/adapter.bin"]:
        store.put_bytes(key, key.encode())

    everything = list(store.list())

    # Plain string order, as S3 lists: "a-b" < "a/c" < "a0".
    assert [info.key for info in everything] == [
        "a-b",
        "a/c",
        "a0",
        "runs/1/ckpt/adapter.bin",
        "runs/1/events.jsonl",
        "runs/10/metrics.csv",
    ]
    assert all(isinstance(info, ObjectInfo) and info.size == len(info.key) for info in everything)
    assert all(info.last_modified.utcoffset() is not None for info in everything)
    # A prefix is a folder: "runs/1" does not cover "runs/10/…".
    assert [info.key for info in store.list("runs/1")] == ["runs/1/ckpt/adapter.bin", "runs/1/events.jsonl"]
    assert [info.key for info in store.list("runs/1/")] == ["runs/1/ckpt/adapter.bin", "runs/1/events.jsonl"]
    assert list(store.list("missing")) == []


def test_exists_size_delete(store: ObjectStore) -> None:
    store.put_bytes("teams/1/a.txt", b"abc")

    assert store.exists("teams/1/a.txt")
    assert not store.exists("teams/1/b.txt")
    assert not store.exists("teams/1")  # a folder is not an object
    assert store.size("teams/1/a.txt") == 3

    store.delete("teams/1/a.txt")
    store.delete("teams/1/a.txt")  # deleting a missing object is fine

    assert not store.exists("teams/1/a.txt")
    assert list(store.list()) == []


def test_delete_prefix_removes_one_folder_only(store_backend: StoreBackend) -> None:
    store = store_backend.store
    for key in ["runs/1/a", "runs/1/deep/b", "runs/10/c", "runs/other"]:
        store.put_bytes(key, b"x")

    assert store.delete_prefix("runs/1") == 2
    assert [info.key for info in store.list()] == ["runs/10/c", "runs/other"]
    assert store.delete_prefix("runs/1") == 0
    with pytest.raises(ValueError, match="non-empty prefix"):
        store.delete_prefix("")
    assert store_backend.raw_names() == ["root/runs/10/c", "root/runs/other"]


def test_child_views_are_isolated(store: ObjectStore) -> None:
    team_1 = store.child("teams/1")
    team_2 = store.child("teams/2")

    team_1.put_bytes("files/file-a.jsonl", b"team one")
    team_2.put_bytes("files/file-a.jsonl", b"team two")

    assert team_1.get_bytes("files/file-a.jsonl") == b"team one"
    assert team_2.get_bytes("files/file-a.jsonl") == b"team two"
    assert [info.key for info in team_1.list()] == ["files/file-a.jsonl"]
    assert [info.key for info in store.list()] == ["teams/1/files/file-a.jsonl", "teams/2/files/file-a.jsonl"]
    assert store.get_bytes("teams/1/files/file-a.jsonl") == b"team one"
    assert team_1.uri("files/file-a.jsonl") == store.uri("teams/1/files/file-a.jsonl")
    assert team_1.child("files").get_bytes("file-a.jsonl") == b"team one"
    assert team_1.delete_prefix("files") == 1
    assert team_2.exists("files/file-a.jsonl")


ESCAPING_KEYS = [
    "../x",
    "/abs",
    "a/../../b",
    "..",
    "a/./b",
    "a//b",
    "a/",
    "",
    "a\\..\\b",
    "a\x00b",
    "line\nbreak",
]


@pytest.mark.parametrize("key", ESCAPING_KEYS)
def test_keys_that_could_escape_are_refused(store_backend: StoreBackend, key: str) -> None:
    team = store_backend.store.child("teams/1")
    store_backend.store.put_bytes("teams/2/secret", b"other team")

    with pytest.raises(InvalidKey):
        team.put_bytes(key, b"x")
    with pytest.raises(InvalidKey):
        team.open(key)
    with pytest.raises(InvalidKey):
        team.exists(key)
    with pytest.raises(InvalidKey):
        team.delete(key)
    if key != "a/":  # a trailing "/" is fine in a folder prefix, never in an object key
        with pytest.raises(InvalidKey):
            team.child(key)
    with pytest.raises(InvalidKey):
        team.uri(key)
    with pytest.raises(InvalidKey):
        team.presign_get(key)

    assert store_backend.raw_names() == ["root/teams/2/secret"]


def test_invalid_key_is_a_value_error_naming_the_key(store: ObjectStore) -> None:
    with pytest.raises(ValueError, match=r"'a/\.\./\.\./b'"):
        store.put_bytes("a/../../b", b"x")


def test_missing_objects_raise_object_not_found(store: ObjectStore, tmp_path: Path) -> None:
    store.put_bytes("folder/present", b"x")
    destination = tmp_path / "kept.bin"
    destination.write_bytes(b"local copy")

    for missing in ["absent", "folder"]:
        with pytest.raises(ObjectNotFound) as not_found:
            store.open(missing)
        assert not_found.value.key == missing
        with pytest.raises(ObjectNotFound):
            store.get_bytes(missing)
        with pytest.raises(ObjectNotFound):
            store.size(missing)
        with pytest.raises(ObjectNotFound):
            store.sha256(missing)
        with pytest.raises(ObjectNotFound):
            store.download(missing, destination)

    assert issubclass(ObjectNotFound, StorageError)
    assert destination.read_bytes() == b"local copy"
    assert [path.name for path in tmp_path.iterdir() if path.is_file()] == ["kept.bin"]  # no temporary files


def test_download_writes_atomically(store: ObjectStore, tmp_path: Path) -> None:
    data = os.urandom(3 * MiB)
    store.put_bytes("adapters/a/adapter_model.safetensors", data)
    destination = tmp_path / "downloads" / "nested" / "adapter_model.safetensors"
    destination.parent.mkdir(parents=True)
    destination.write_bytes(b"stale")

    assert store.download("adapters/a/adapter_model.safetensors", destination) == destination

    assert destination.read_bytes() == data
    assert os.listdir(destination.parent) == ["adapter_model.safetensors"]


def test_presigned_urls(store_backend: StoreBackend) -> None:
    store = store_backend.store
    store.put_bytes("exports/model.gguf", b"GGUF adapter bytes")

    get_url = store.presign_get("exports/model.gguf", expires_in=60, filename="mein modell.gguf")
    put_url = store.presign_put("uploads/file-x.jsonl", expires_in=60)

    if store_backend.name == "file":
        # A local store hands out the file itself.
        assert get_url.startswith("file:///")
        assert (
            Path(urllib.parse.unquote(urllib.parse.urlsplit(get_url).path)).read_bytes()
            == b"GGUF adapter bytes"
        )
        target = Path(urllib.parse.unquote(urllib.parse.urlsplit(put_url).path))
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b'{"prompt": "a"}\n')
    else:
        with httpx.Client(trust_env=False, timeout=10) as http:
            response = http.get(get_url)
            assert response.status_code == 200
            assert response.content == b"GGUF adapter bytes"
            assert "attachment" in response.headers["content-disposition"]
            assert "mein%20modell.gguf" in response.headers["content-disposition"]
            assert http.put(put_url, content=b'{"prompt": "a"}\n').status_code == 200

    assert store.get_bytes("uploads/file-x.jsonl") == b'{"prompt": "a"}\n'
    # An object uploaded through a URL carries no recorded digest; sha256() computes it.
    assert store.sha256("uploads/file-x.jsonl") == sha256_hex(b'{"prompt": "a"}\n')


@pytest.mark.parametrize("expires_in", [0, 8 * 24 * 3600])
def test_presign_refuses_expiry_out_of_range(store: ObjectStore, expires_in: int) -> None:
    with pytest.raises(ValueError, match="expires_in"):
        store.presign_get("x", expires_in=expires_in)
    with pytest.raises(ValueError, match="expires_in"):
        store.presign_put("x", expires_in=expires_in)


def test_put_dir_and_get_dir_round_trip(store: ObjectStore, tmp_path: Path) -> None:
    adapter = tmp_path / "adapter"
    (adapter / "tokenizer").mkdir(parents=True)
    (adapter / "empty-folder").mkdir()
    files = {
        "adapter_config.json": b'{"r": 16, "lora_alpha": 32}',
        "adapter_model.safetensors": os.urandom(300_000),
        "tokenizer/tokenizer.json": b'{"version": "1.0"}',
        ".gitattributes": b"*.safetensors filter=lfs",
    }
    for name, data in files.items():
        (adapter / name).write_bytes(data)
    # Hugging Face snapshots are symbolic links to blobs; the linked bytes are what gets stored.
    blob = tmp_path / "blob"
    blob.write_bytes(b"chat template")
    (adapter / "chat_template.jinja").symlink_to(blob)
    files["chat_template.jinja"] = b"chat template"

    stored = store.put_dir(adapter, "adapters/ft-1/v1")

    assert [obj.key for obj in stored] == sorted(f"adapters/ft-1/v1/{name}" for name in files)
    assert {obj.key: obj.sha256 for obj in stored} == {
        f"adapters/ft-1/v1/{name}": sha256_hex(data) for name, data in files.items()
    }

    written = store.get_dir("adapters/ft-1/v1", tmp_path / "copy")

    assert sorted(path.relative_to(tmp_path / "copy").as_posix() for path in written) == sorted(files)
    for name, data in files.items():
        assert (tmp_path / "copy" / name).read_bytes() == data
    with pytest.raises(ObjectNotFound):
        store.get_dir("adapters/ft-2", tmp_path / "nothing")
    assert not (tmp_path / "nothing").exists()


# -- S3 specifics -----------------------------------------------------------------------------


@pytest.mark.integration
def test_get_dir_refuses_keys_from_other_tools_that_escape(
    s3_endpoint: str, s3_bucket: str, s3_admin: Any, tmp_path: Path
) -> None:
    # S3 keys are opaque strings; another tool can write one that looks like a path traversal.
    s3_admin.put_object(Bucket=s3_bucket, Key="root/adapters/x/../../../../evil.txt", Body=b"evil")
    store = open_store(f"s3://{s3_bucket}/root", endpoint_url=s3_endpoint, **TEST_CREDENTIALS)

    with pytest.raises(InvalidKey):
        store.get_dir("adapters/x", tmp_path / "deep" / "er" / "out")

    assert not any(path.name == "evil.txt" for path in tmp_path.rglob("*"))


@pytest.mark.integration
def test_sha256_of_object_written_by_another_tool_is_computed(
    s3_endpoint: str, s3_bucket: str, s3_admin: Any
) -> None:
    s3_admin.put_object(Bucket=s3_bucket, Key="base-models/tiny/config.json", Body=b"{}")
    store = open_store(f"s3://{s3_bucket}", endpoint_url=s3_endpoint, **TEST_CREDENTIALS)

    assert store.sha256("base-models/tiny/config.json") == sha256_hex(b"{}")


@pytest.mark.integration
def test_missing_bucket_is_a_storage_error_naming_it(s3_endpoint: str) -> None:
    store = open_store("s3://tailor-no-such-bucket/root", endpoint_url=s3_endpoint, **TEST_CREDENTIALS)

    with pytest.raises(StorageError, match="tailor-no-such-bucket"):
        store.put_bytes("a", b"x")


# -- opening stores from URLs -----------------------------------------------------------------


def test_open_store_by_url_scheme(tmp_path: Path) -> None:
    from_uri = open_store(tmp_path.as_uri())
    from_path = open_store(str(tmp_path))
    s3_store = open_store(
        "s3://tailor-artifacts/prod/v1", endpoint_url="http://127.0.0.1:9", **TEST_CREDENTIALS
    )

    assert isinstance(from_uri, LocalObjectStore) and isinstance(from_path, LocalObjectStore)
    assert from_uri.uri("a/b.json") == from_path.uri("a/b.json") == (tmp_path / "a" / "b.json").as_uri()
    assert isinstance(s3_store, S3ObjectStore)
    assert s3_store.uri("teams/1/x") == "s3://tailor-artifacts/prod/v1/teams/1/x"
    assert s3_store.child("teams/1").uri("x") == "s3://tailor-artifacts/prod/v1/teams/1/x"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("gs://bucket/x", "unsupported storage URL scheme"),
        ("s3:///prefix", "names no bucket"),
        ("file://server/share", "must be local"),
        ("s3://bucket/../x", "'..'"),
        ("", "empty"),
    ],
)
def test_open_store_rejects_bad_urls(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        open_store(url)


def test_client_options_apply_to_s3_only(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="s3:// stores only"):
        open_store(str(tmp_path), endpoint_url="http://127.0.0.1:9")


def test_s3_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "from-env")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "from-env-secret")
    monkeypatch.setenv("AWS_REGION", "eu-central-1")

    store = open_store("s3://tailor-artifacts")
    again = open_store("s3://tailor-artifacts/other")

    assert isinstance(store, S3ObjectStore) and isinstance(again, S3ObjectStore)
    assert store.client is again.client  # clients are cached per configuration
    assert store.client.meta.endpoint_url == "http://127.0.0.1:9"
    assert store.client.meta.region_name == "eu-central-1"
    # Path-style addressing, as MinIO and other S3-compatible servers expect.
    assert store.presign_get("k").startswith("http://127.0.0.1:9/tailor-artifacts/k?")
    assert "from-env" in store.presign_get("k")


def test_importing_the_store_loads_no_boto3_and_no_torch() -> None:
    probe = "import sys, gpu_runner.storage; print(sorted({'boto3', 'botocore', 'torch'} & set(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parents[2],
    )
    assert result.stdout.strip() == "[]"


def test_text_stream_is_refused_with_a_clear_error(store: ObjectStore) -> None:
    with pytest.raises(TypeError, match="binary mode"):
        store.put("notes.txt", io.StringIO("text"))  # type: ignore[arg-type]
    assert list(store.list()) == []
