"""MNIST loader and downloader: generated IDX files, a local HTTP mirror, and the real data."""

import gzip
import hashlib
import http.server
import os
import socket
import threading

import numpy as np
import pytest

from cnnforge import cli, mnist
from cnnforge.errors import DataError
from helpers import MNIST_DIR, needs_mnist

IMAGES, LABELS = mnist.SPLITS["test"]
COUNT = 4                               # images in the generated test split
IMAGE_FILE_BYTES = 16 + COUNT * 28 * 28  # 3152


def idx_bytes(array, *, magic=None, dims=None):
    """The IDX encoding of ``array``; ``magic`` and ``dims`` override the header to break it."""
    array = np.asarray(array)
    code = {"u1": 0x08, "i1": 0x09, "i2": 0x0B, "i4": 0x0C, "f4": 0x0D, "f8": 0x0E}
    magic = code[array.dtype.str[1:]] << 8 | array.ndim if magic is None else magic
    dims = array.shape if dims is None else dims
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def random_split(count, seed):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(count, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=count, dtype=np.uint8)
    return images, labels


def write_split(directory, images, labels, *, gz=True, split="test"):
    directory.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    images_name, labels_name = mnist.SPLITS[split]
    for name, array in ((images_name, images), (labels_name, labels)):
        content = idx_bytes(array)
        (directory / f"{name}{suffix}").write_bytes(gzip.compress(content) if gz else content)


GOOD_IMAGES, GOOD_LABELS = random_split(COUNT, seed=1)


# -- loader -------------------------------------------------------------------------------------

@pytest.mark.parametrize("gz", [True, False], ids=["gz", "raw"])
def test_load_returns_the_arrays_written(tmp_path, gz):
    write_split(tmp_path, GOOD_IMAGES, GOOD_LABELS, gz=gz)
    images, labels = mnist.load("test", tmp_path, expect_count=COUNT)
    assert images.dtype == np.uint8 and images.shape == (COUNT, 28, 28)
    assert labels.dtype == np.uint8 and labels.shape == (COUNT,)
    np.testing.assert_array_equal(images, GOOD_IMAGES)
    np.testing.assert_array_equal(labels, GOOD_LABELS)
    images[0, 0, 0] = 7     # callers may normalise in place


def test_load_prefers_gz_over_raw(tmp_path):
    other_images, other_labels = random_split(COUNT, seed=2)
    write_split(tmp_path, other_images, other_labels, gz=False)
    write_split(tmp_path, GOOD_IMAGES, GOOD_LABELS, gz=True)
    images, labels = mnist.load("test", tmp_path, expect_count=COUNT)
    np.testing.assert_array_equal(images, GOOD_IMAGES)
    np.testing.assert_array_equal(labels, GOOD_LABELS)


def test_load_takes_the_official_count_by_default(tmp_path):
    write_split(tmp_path, GOOD_IMAGES, GOOD_LABELS)
    with pytest.raises(DataError, match=f"header says {COUNT} images, expected 10000"):
        mnist.load("test", tmp_path)
    write_split(tmp_path, GOOD_IMAGES, GOOD_LABELS, split="train")
    with pytest.raises(DataError, match=f"header says {COUNT} images, expected 60000"):
        mnist.load("train", tmp_path)


def test_load_default_folder_is_mnist_dir_then_data_mnist(tmp_path, monkeypatch):
    write_split(tmp_path / "env", GOOD_IMAGES, GOOD_LABELS)
    monkeypatch.setenv("MNIST_DIR", str(tmp_path / "env"))
    np.testing.assert_array_equal(mnist.load("test", expect_count=COUNT)[1], GOOD_LABELS)

    monkeypatch.delenv("MNIST_DIR")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=r"data/mnist/t10k-images-idx3-ubyte\.gz: missing"):
        mnist.load("test", expect_count=COUNT)
    write_split(tmp_path / "data" / "mnist", GOOD_IMAGES, GOOD_LABELS)
    np.testing.assert_array_equal(mnist.load("test", expect_count=COUNT)[1], GOOD_LABELS)


def test_load_rejects_unknown_split(tmp_path):
    with pytest.raises(ValueError, match=r"split must be 'train' or 'test', not 'val'"):
        mnist.load("val", tmp_path)


@pytest.mark.parametrize("folder_exists", [True, False], ids=["empty-folder", "no-folder"])
def test_missing_files_name_the_file_and_how_to_get_it(tmp_path, folder_exists):
    directory = tmp_path / "mnist"
    if folder_exists:
        directory.mkdir()
    with pytest.raises(DataError) as caught:
        mnist.load("test", directory)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{directory / IMAGES}.gz: missing MNIST file")
    assert "make data" in message and f"cnnforge data --dir {directory}" in message
    assert "MNIST_DIR" in message
    assert ("does not exist" in message) != folder_exists


def test_missing_labels_are_named(tmp_path):
    write_split(tmp_path, GOOD_IMAGES, GOOD_LABELS)
    (tmp_path / f"{LABELS}.gz").unlink()
    with pytest.raises(DataError, match=f"{LABELS}.gz: missing MNIST file"):
        mnist.load("test", tmp_path, expect_count=COUNT)


def _gzip_with_bad_crc(content):
    packed = bytearray(gzip.compress(content))
    packed[-8] ^= 0xFF      # first byte of the CRC32 in the gzip trailer
    return bytes(packed)


_GOOD_IMAGE_IDX = idx_bytes(GOOD_IMAGES)
_GOOD_LABEL_IDX = idx_bytes(GOOD_LABELS)

# (id, which file is bad, its suffix, its bytes on disk, substrings the message must contain)
BAD_FILES = [
    ("truncated", IMAGES, ".gz", gzip.compress(_GOOD_IMAGE_IDX[:-100]),
     ["truncated: header says 4 images of 28x28 (3152 bytes)", "file has 3052 bytes uncompressed"]),
    ("truncated-raw", IMAGES, "", _GOOD_IMAGE_IDX[:-1],
     ["truncated: header says 4 images of 28x28 (3152 bytes), file has 3151 bytes"]),
    ("truncated-header", IMAGES, "", _GOOD_IMAGE_IDX[:10],
     ["truncated: file has 10 bytes, shorter than its 16-byte IDX header"]),
    ("empty", IMAGES, ".gz", gzip.compress(b""),
     ["truncated: file has 0 bytes uncompressed"]),
    ("trailing-bytes", IMAGES, ".gz", gzip.compress(_GOOD_IMAGE_IDX + b"\0\0\0"),
     ["3 trailing bytes: header says 4 images of 28x28 (3152 bytes)",
      "file has 3155 bytes uncompressed"]),
    ("bad-magic", IMAGES, ".gz", gzip.compress(idx_bytes(GOOD_IMAGES, magic=0x00000802)),
     ["bad magic 0x00000802, expected 0x00000803"]),
    ("gzip-without-gz-name", IMAGES, "", gzip.compress(_GOOD_IMAGE_IDX),
     ["bad magic 0x1f8b", "gzip-compressed"]),
    ("wrong-count", IMAGES, ".gz", gzip.compress(idx_bytes(GOOD_IMAGES[:3])),
     ["header says 3 images, expected 4"]),
    ("wrong-image-size", IMAGES, ".gz", gzip.compress(idx_bytes(GOOD_IMAGES[:, :, :27])),
     ["header says images of 28x27, expected 28x28"]),
    ("not-gzip", IMAGES, ".gz", b"<html>404 Not Found</html>",
     ["corrupt gzip", "Not a gzipped file"]),
    ("gzip-cut-short", IMAGES, ".gz", gzip.compress(_GOOD_IMAGE_IDX)[:-20],
     ["corrupt gzip: compressed stream ends early"]),
    ("gzip-bad-crc", IMAGES, ".gz", _gzip_with_bad_crc(_GOOD_IMAGE_IDX),
     ["corrupt gzip", "CRC check failed"]),
    ("label-out-of-range", LABELS, ".gz",
     gzip.compress(idx_bytes(np.array([1, 2, 10, 3], np.uint8))),
     ["label 10 at index 2 is out of range 0..9 (1 such labels)"]),
    ("labels-bad-magic", LABELS, ".gz", gzip.compress(_GOOD_IMAGE_IDX),
     ["bad magic 0x00000803, expected 0x00000801"]),
    ("labels-truncated", LABELS, ".gz", gzip.compress(_GOOD_LABEL_IDX[:-1]),
     ["truncated: header says 4 labels (12 bytes), file has 11 bytes uncompressed"]),
    ("labels-trailing", LABELS, "", _GOOD_LABEL_IDX + b"\x01",
     ["1 trailing bytes: header says 4 labels (12 bytes), file has 13 bytes"]),
    ("counts-disagree", LABELS, ".gz", gzip.compress(idx_bytes(GOOD_LABELS[:3])),
     [f"header says 3 labels, but {IMAGES}.gz has 4 images"]),
]


@pytest.mark.parametrize("bad_name, suffix, content, expected",
                         [case[1:] for case in BAD_FILES], ids=[case[0] for case in BAD_FILES])
def test_bad_file_raises_one_line_naming_file_and_problem(tmp_path, bad_name, suffix, content,
                                                          expected):
    write_split(tmp_path, GOOD_IMAGES, GOOD_LABELS)
    (tmp_path / f"{bad_name}.gz").unlink()
    bad_path = tmp_path / f"{bad_name}{suffix}"
    bad_path.write_bytes(content)
    with pytest.raises(DataError) as caught:
        mnist.load("test", tmp_path, expect_count=COUNT)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{bad_path}: ")
    for fragment in expected:
        assert fragment in message


def test_read_idx_reads_any_idx_file(tmp_path):
    array = np.arange(-6, 6, dtype=np.int32).reshape(2, 3, 2) * 1000
    path = tmp_path / "numbers.idx"
    path.write_bytes(idx_bytes(array))
    result = mnist.read_idx(path)
    assert result.dtype == np.int32 and result.dtype.isnative
    np.testing.assert_array_equal(result, array)

    floats = np.linspace(0, 1, 5, dtype=np.float64)
    (tmp_path / "floats.idx.gz").write_bytes(gzip.compress(idx_bytes(floats)))
    np.testing.assert_array_equal(mnist.read_idx(tmp_path / "floats.idx.gz"), floats)

    path.write_bytes(idx_bytes(array)[:-1])
    with pytest.raises(DataError,
                       match=r"truncated: header says shape 2x3x2 of int32 \(64 bytes\), "
                             r"file has 63 bytes$"):
        mnist.read_idx(path)
    path.write_bytes(b"\x00\x00\x07\x01" + bytes(8))
    with pytest.raises(DataError, match=r"numbers\.idx: not an IDX file: magic 0x00000701"):
        mnist.read_idx(path)
    with pytest.raises(DataError, match=r"absent\.idx: cannot read"):
        mnist.read_idx(tmp_path / "absent.idx")


def test_read_functions_take_expected_counts(tmp_path):
    path = tmp_path / "labels.gz"
    path.write_bytes(gzip.compress(_GOOD_LABEL_IDX))
    np.testing.assert_array_equal(mnist.read_labels(path, expect_count=COUNT), GOOD_LABELS)
    with pytest.raises(DataError, match=r"labels\.gz: header says 4 labels, expected 5"):
        mnist.read_labels(path, expect_count=5)


# -- downloader ---------------------------------------------------------------------------------

class _MirrorHandler(http.server.BaseHTTPRequestHandler):
    """Serves ``server.routes[path] = (behaviour, body)``; anything else is a 404."""

    def do_GET(self):
        self.server.hits.append(self.path)
        behaviour, body = self.server.routes.get(self.path, (None, b""))
        if behaviour is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/gzip")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if behaviour == "ok":
            self.wfile.write(body)
        elif behaviour == "truncated":        # promise the whole body, send half, close
            self.wfile.write(body[:len(body) // 2])
        elif behaviour == "stall":            # send a little, then go silent
            self.wfile.write(body[:10])
            self.wfile.flush()
            self.server.release.wait(10)

    def log_message(self, format, *args):
        pass


class Mirrors:
    """A local HTTP server standing in for the public mirrors, one URL prefix per mirror."""

    def __init__(self):
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _MirrorHandler)
        self.server.daemon_threads = True
        self.server.routes, self.server.hits = {}, []
        self.server.release = threading.Event()
        # A short poll interval keeps shutdown() (one per test) from waiting the default 0.5 s.
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.01,), daemon=True)
        self.thread.start()

    @property
    def hits(self):
        return self.server.hits

    def serve(self, mirror, files, behaviour="ok"):
        """Put ``files`` (name -> uncompressed bytes) on ``mirror``; return the mirror's URL."""
        for name, content in files.items():
            self.server.routes[f"/{mirror}/{name}.gz"] = (behaviour, gzip.compress(content))
        return self.url(mirror)

    def url(self, mirror):
        return f"http://127.0.0.1:{self.server.server_address[1]}/{mirror}/"

    def close(self):
        self.server.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def mirrors():
    server = Mirrors()
    yield server
    server.close()


@pytest.fixture
def dataset():
    """Uncompressed content of four small MNIST files, and their checksum table."""
    files = {}
    for seed, (split, count) in enumerate([("train", 6), ("test", COUNT)]):
        images, labels = random_split(count, seed=10 + seed)
        images_name, labels_name = mnist.SPLITS[split]
        files[images_name], files[labels_name] = idx_bytes(images), idx_bytes(labels)
    checksums = {name: hashlib.sha256(content).hexdigest() for name, content in files.items()}
    return files, checksums


def refused_url():
    """A localhost URL nobody listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def gz_names(files):
    return sorted(f"{name}.gz" for name in files)


def test_download_fetches_and_verifies_every_file(tmp_path, mirrors, dataset):
    files, checksums = dataset
    url = mirrors.serve("m1", files)
    dest = tmp_path / "new" / "mnist"
    paths = mnist.download(dest, mirrors=[url], progress=False, checksums=checksums)
    assert sorted(p.name for p in paths) == gz_names(files)
    assert sorted(os.listdir(dest)) == gz_names(files)
    for name, content in files.items():
        assert gzip.decompress((dest / f"{name}.gz").read_bytes()) == content
        assert mnist.content_sha256(dest / f"{name}.gz") == checksums[name]
    assert len(mirrors.hits) == 4
    assert len(mnist.load("train", dest, expect_count=6)[0]) == 6


def test_checksum_mismatch_moves_on_to_the_next_mirror(tmp_path, mirrors, dataset):
    files, checksums = dataset
    tampered = {name: content[:-1] + bytes([content[-1] ^ 1]) for name, content in files.items()}
    bad = mirrors.serve("bad", tampered)
    good = mirrors.serve("good", files)
    dest = tmp_path / "mnist"
    mnist.download(dest, mirrors=[bad, good], progress=False, checksums=checksums)
    assert sorted(os.listdir(dest)) == gz_names(files)
    for name, content in files.items():
        assert gzip.decompress((dest / f"{name}.gz").read_bytes()) == content
    assert sum(hit.startswith("/bad/") for hit in mirrors.hits) == 4
    assert sum(hit.startswith("/good/") for hit in mirrors.hits) == 4


def test_checksum_mismatch_everywhere_is_reported(tmp_path, mirrors, dataset):
    files, checksums = dataset
    wrong = dict(checksums, **{IMAGES: "0" * 64})
    url = mirrors.serve("m1", files)
    dest = tmp_path / "mnist"
    with pytest.raises(DataError) as caught:
        mnist.download(dest, mirrors=[url], progress=False, checksums=wrong)
    message = str(caught.value)
    assert message.startswith(f"{dest / IMAGES}.gz: download failed from every mirror: ")
    assert f"{url}{IMAGES}.gz: checksum mismatch" in message
    assert f"expected {'0' * 12}" in message
    assert not (dest / f"{IMAGES}.gz").exists()
    assert not any(".part" in name for name in os.listdir(dest))


def test_truncated_response_leaves_nothing_behind(tmp_path, mirrors, dataset):
    files, checksums = dataset
    url = mirrors.serve("m1", files, behaviour="truncated")
    dest = tmp_path / "mnist"
    dest.mkdir()
    with pytest.raises(DataError) as caught:
        mnist.download(dest, mirrors=[url], progress=False, checksums=checksums)
    message = str(caught.value)
    assert "\n" not in message
    first = next(iter(files))
    assert message.startswith(f"{dest / first}.gz: download failed from every mirror: ")
    assert f"{url}{first}.gz: connection closed after " in message
    assert list(dest.iterdir()) == []


def test_truncated_then_stalled_mirror_fall_through_to_a_good_one(tmp_path, mirrors, dataset):
    files, checksums = dataset
    cut = mirrors.serve("cut", files, behaviour="truncated")
    stalled = mirrors.serve("stalled", files, behaviour="stall")
    good = mirrors.serve("good", files)
    dest = tmp_path / "mnist"
    mnist.download(dest, mirrors=[cut, stalled, good], progress=False, timeout=0.2,
                   checksums=checksums)
    assert sorted(os.listdir(dest)) == gz_names(files)
    for name, content in files.items():
        assert gzip.decompress((dest / f"{name}.gz").read_bytes()) == content


def test_all_mirrors_failing_raises_one_line_with_each_reason(tmp_path, mirrors, dataset):
    files, checksums = dataset
    missing = mirrors.url("empty")
    stalled = mirrors.serve("stalled", files, behaviour="stall")
    refused = refused_url()
    dest = tmp_path / "mnist"
    with pytest.raises(DataError) as caught:
        mnist.download(dest, mirrors=[missing, stalled, refused, "ftp:/nonsense/"],
                       progress=False, timeout=0.2, checksums=checksums)
    message = str(caught.value)
    first = next(iter(files))
    assert "\n" not in message
    assert message.startswith(f"{dest / first}.gz: download failed from every mirror: ")
    assert f"{missing}{first}.gz: HTTP 404" in message
    assert f"{stalled}{first}.gz: timed out after 0.2 s" in message
    assert f"{refused}{first}.gz: " in message and "refused" in message.lower()
    assert f"ftp:/nonsense/{first}.gz: " in message
    assert not dest.exists() or list(dest.iterdir()) == []


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "raw"])
def test_valid_files_already_present_are_not_downloaded(tmp_path, mirrors, dataset, gz):
    files, checksums = dataset
    dest = tmp_path / "mnist"
    dest.mkdir()
    for name, content in files.items():
        (dest / f"{name}{'.gz' if gz else ''}").write_bytes(gzip.compress(content) if gz
                                                          else content)
    before = {p.name: p.stat().st_mtime_ns for p in dest.iterdir()}
    url = mirrors.serve("m1", files)
    paths = mnist.download(dest, mirrors=[url], progress=False, checksums=checksums)
    assert mirrors.hits == []
    assert {p.name: p.stat().st_mtime_ns for p in dest.iterdir()} == before
    assert sorted(p.name for p in paths) == sorted(before)


def test_invalid_file_present_is_replaced(tmp_path, mirrors, dataset):
    files, checksums = dataset
    dest = tmp_path / "mnist"
    dest.mkdir()
    for name, content in files.items():
        (dest / f"{name}.gz").write_bytes(gzip.compress(content))
    (dest / f"{IMAGES}.gz").write_bytes(b"corrupt")
    url = mirrors.serve("m1", files)
    mnist.download(dest, mirrors=[url], progress=False, checksums=checksums)
    assert mirrors.hits == [f"/m1/{IMAGES}.gz"]
    assert gzip.decompress((dest / f"{IMAGES}.gz").read_bytes()) == files[IMAGES]
    assert sorted(os.listdir(dest)) == gz_names(files)


def test_cli_data_downloads_into_dir(tmp_path, mirrors, dataset, monkeypatch, capsys):
    files, checksums = dataset
    monkeypatch.setattr(mnist, "MIRRORS", (mirrors.serve("m1", files),))
    monkeypatch.setattr(mnist, "SHA256", checksums)
    dest = tmp_path / "mnist"
    assert cli.main(["-q", "data", "--dir", str(dest)]) == 0
    assert f"MNIST ready in {dest}" in capsys.readouterr().out
    assert sorted(os.listdir(dest)) == gz_names(files)


def test_cli_data_failure_is_one_line(tmp_path, mirrors, dataset, monkeypatch, capsys):
    files, checksums = dataset
    monkeypatch.setattr(mnist, "MIRRORS", (mirrors.url("empty"),))
    monkeypatch.setattr(mnist, "SHA256", checksums)
    dest = tmp_path / "mnist"
    assert cli.main(["-q", "data", "--dir", str(dest)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("cnnforge data: error: ") and "HTTP 404" in err


# -- the real MNIST -----------------------------------------------------------------------------

@needs_mnist
def test_real_mnist():
    histograms = {
        "train": [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949],
        "test": [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009],
    }
    for split, count in mnist.COUNTS.items():
        images, labels = mnist.load(split, MNIST_DIR)
        assert images.shape == (count, 28, 28) and images.dtype == np.uint8
        assert labels.shape == (count,) and labels.dtype == np.uint8
        histogram = np.bincount(labels, minlength=10)
        assert histogram.sum() == count
        assert histogram.tolist() == histograms[split]
        assert images.max() == 255 and images[:, 0, 0].max() == 0   # corners are background
    for name, sha256 in mnist.SHA256.items():
        assert mnist.content_sha256(mnist.find_file(MNIST_DIR, name)) == sha256
    # Every file is verified and kept, so no mirror is contacted.
    mnist.download(MNIST_DIR, mirrors=[refused_url()], progress=False)
