"""MNIST: read the official IDX files, and download them with verified checksums.

The four files keep their official names and may be gzip-compressed (``.gz``, preferred when both
exist) or raw. Every problem with them raises :class:`~cnnforge.errors.DataError` with one line
that names the file and what is wrong with it.
"""

import gzip
import hashlib
import http.client
import os
import sys
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import numpy as np

from .errors import DataError
from .fsutil import atomic_open

__all__ = [
    "SPLITS", "COUNTS", "SHA256", "MIRRORS", "IMAGE_MAGIC", "LABEL_MAGIC", "IMAGE_SIZE", "CLASSES",
    "read_idx", "read_images", "read_labels", "load", "find_file", "content_sha256", "download",
]

#: Image and label file names of each split, without the ``.gz`` suffix.
SPLITS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

#: Number of images (and labels) in each split.
COUNTS = {"train": 60_000, "test": 10_000}

#: sha256 of each file's uncompressed content: the gzip wrappers differ between mirrors, the
#: content does not.
SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}

#: Public mirrors tried in order; each serves ``<mirror><name>.gz``.
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)

IMAGE_MAGIC = 0x00000803    # unsigned bytes, 3 dimensions
LABEL_MAGIC = 0x00000801    # unsigned bytes, 1 dimension
IMAGE_SIZE = (28, 28)
CLASSES = 10

_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 16


def _how_to_get_it(directory):
    return (f"run `make data` or `cnnforge data --dir {directory}`, "
            f"or set MNIST_DIR to the folder that holds the MNIST files")


def _read_content(path):
    """The file's bytes, decompressed when its name ends in ``.gz``."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror or e}") from e
    if path.suffix != ".gz":
        return raw
    try:
        return gzip.decompress(raw)
    except EOFError as e:
        raise DataError(f"{path}: corrupt gzip: compressed stream ends early "
                        f"({len(raw)} bytes)") from e
    except (gzip.BadGzipFile, zlib.error) as e:
        raise DataError(f"{path}: corrupt gzip: {_one_line(e)}") from e


def _one_line(error):
    return " ".join(str(error).split()) or type(error).__name__


def _describe(dims, dtype):
    if dtype == np.uint8 and len(dims) == 3:
        return f"{dims[0]} images of {dims[1]}x{dims[2]}"
    if dtype == np.uint8 and len(dims) == 1:
        return f"{dims[0]} labels"
    return f"shape {'x'.join(map(str, dims))} of {dtype.name}"


def read_idx(path, *, expect_magic=None, expect_count=None, expect_item_shape=None):
    """Read one IDX file (raw, or gzip-compressed when its name ends in ``.gz``).

    Parameters
    ----------
    path : str or os.PathLike
        The file.
    expect_magic : int, optional
        Required magic number (for example :data:`IMAGE_MAGIC`); any valid IDX magic if omitted.
    expect_count : int, optional
        Required size of the first dimension; any if omitted.
    expect_item_shape : tuple of int, optional
        Required sizes of the other dimensions; any if omitted.

    Returns
    -------
    numpy.ndarray
        A writeable array in native byte order with the shape the header gives.

    Raises
    ------
    DataError
        The file is missing or unreadable, a ``.gz`` file is not valid gzip, the header is not
        IDX or not what was expected, or the data is shorter or longer than the header says.
    """
    path = Path(path)
    suffix = " uncompressed" if path.suffix == ".gz" else ""
    content = _read_content(path)
    if len(content) < 4:
        raise DataError(f"{path}: truncated: file has {len(content)} bytes{suffix}, "
                        f"shorter than an IDX header")
    magic = int.from_bytes(content[:4], "big")
    if expect_magic is not None and magic != expect_magic:
        hint = ("; it looks gzip-compressed, so give it a .gz name"
                if content[:2] == _GZIP_MAGIC and not suffix else "")
        raise DataError(f"{path}: bad magic 0x{magic:08x}, expected 0x{expect_magic:08x}{hint}")
    dtype_code, ndim = content[2], content[3]
    if content[:2] != b"\0\0" or dtype_code not in _IDX_DTYPES or ndim == 0:
        raise DataError(f"{path}: not an IDX file: magic 0x{magic:08x}")
    dtype = np.dtype(_IDX_DTYPES[dtype_code])
    header_bytes = 4 + 4 * ndim
    if len(content) < header_bytes:
        raise DataError(f"{path}: truncated: file has {len(content)} bytes{suffix}, "
                        f"shorter than its {header_bytes}-byte IDX header")
    dims = tuple(int.from_bytes(content[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    noun = "images" if magic == IMAGE_MAGIC else "labels" if magic == LABEL_MAGIC else "items"
    if expect_count is not None and dims[0] != expect_count:
        raise DataError(f"{path}: header says {dims[0]} {noun}, expected {expect_count}")
    if expect_item_shape is not None and dims[1:] != tuple(expect_item_shape):
        got = "x".join(map(str, dims[1:])) or "scalars"
        want = "x".join(map(str, expect_item_shape)) or "scalars"
        raise DataError(f"{path}: header says {noun} of {got}, expected {want}")
    expected_bytes = header_bytes + int(np.prod(dims, dtype=object)) * dtype.itemsize
    if len(content) != expected_bytes:
        problem = ("truncated" if len(content) < expected_bytes
                   else f"{len(content) - expected_bytes} trailing bytes")
        raise DataError(f"{path}: {problem}: header says {_describe(dims, dtype)} "
                        f"({expected_bytes} bytes), file has {len(content)} bytes{suffix}")
    data = np.frombuffer(content, dtype=dtype, offset=header_bytes).reshape(dims)
    # astype copies: the caller gets a writeable, native-order array, not a view of the bytes.
    return data.astype(dtype.newbyteorder("="))


def read_images(path, *, expect_count=None):
    """Read an IDX image file: ``uint8`` array of shape ``(N, 28, 28)``.

    Parameters
    ----------
    path : str or os.PathLike
        The file (``.gz`` or raw).
    expect_count : int, optional
        Required number of images; any if omitted.

    Raises
    ------
    DataError
        As :func:`read_idx`, with the magic fixed to :data:`IMAGE_MAGIC` and 28x28 images.
    """
    return read_idx(path, expect_magic=IMAGE_MAGIC, expect_count=expect_count,
                    expect_item_shape=IMAGE_SIZE)


def read_labels(path, *, expect_count=None):
    """Read an IDX label file: ``uint8`` array of shape ``(N,)``, every label below 10.

    Parameters
    ----------
    path : str or os.PathLike
        The file (``.gz`` or raw).
    expect_count : int, optional
        Required number of labels; any if omitted.

    Raises
    ------
    DataError
        As :func:`read_idx` with the magic fixed to :data:`LABEL_MAGIC`, or a label is 10 or more.
    """
    labels = read_idx(path, expect_magic=LABEL_MAGIC, expect_count=expect_count)
    out_of_range = np.flatnonzero(labels >= CLASSES)
    if out_of_range.size:
        index = int(out_of_range[0])
        raise DataError(f"{path}: label {labels[index]} at index {index} is out of range "
                        f"0..{CLASSES - 1} ({out_of_range.size} such labels)")
    return labels


def find_file(directory, name):
    """The path of MNIST file ``name`` in ``directory``: ``name.gz`` if it exists, else ``name``.

    Raises
    ------
    DataError
        Neither exists (the message says how to get the files).
    """
    directory = Path(directory)
    for candidate in (directory / f"{name}.gz", directory / name):
        if candidate.is_file():
            return candidate
    where = "" if directory.is_dir() else f" (folder {directory} does not exist)"
    raise DataError(f"{directory / name}.gz: missing MNIST file{where}; "
                    f"{_how_to_get_it(directory)}")


def _default_dir():
    return os.environ.get("MNIST_DIR") or "data/mnist"


def load(split, mnist_dir=None, *, expect_count=None):
    """Images and labels of one MNIST split.

    Parameters
    ----------
    split : {"train", "test"}
        Which split.
    mnist_dir : str or os.PathLike, optional
        Folder with the IDX files; default ``$MNIST_DIR``, else ``data/mnist``.
    expect_count : int, optional
        Required number of images; default the official count (60000 train, 10000 test).

    Returns
    -------
    images : numpy.ndarray
        ``uint8``, shape ``(N, 28, 28)``, 0 = background.
    labels : numpy.ndarray
        ``uint8``, shape ``(N,)``, values 0..9.

    Raises
    ------
    ValueError
        ``split`` is not ``"train"`` or ``"test"``.
    DataError
        A file is missing, corrupt, truncated, or disagrees with the other.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    directory = Path(mnist_dir if mnist_dir is not None else _default_dir())
    images_name, labels_name = SPLITS[split]
    images_path = find_file(directory, images_name)
    labels_path = find_file(directory, labels_name)
    images = read_images(images_path, expect_count=COUNTS[split] if expect_count is None
                         else expect_count)
    labels = read_labels(labels_path)
    if len(labels) != len(images):
        raise DataError(f"{labels_path}: header says {len(labels)} labels, but "
                        f"{images_path.name} has {len(images)} images")
    return images, labels


def content_sha256(path):
    """sha256 (hex) of a file's content, decompressed first when its name ends in ``.gz``.

    Raises
    ------
    OSError, EOFError, gzip.BadGzipFile, zlib.error
        The file is unreadable or not valid gzip.
    """
    path = Path(path)
    digest = hashlib.sha256()
    with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _is_valid(path, sha256):
    try:
        return content_sha256(path) == sha256
    except (OSError, EOFError, zlib.error):   # gzip.BadGzipFile is an OSError
        return False


class _MirrorFailed(Exception):
    """One mirror could not deliver one file; the message is its short reason."""


class _GunzipDigest:
    """sha256 of the decompressed content of a gzip stream fed in pieces (members concatenated)."""

    def __init__(self):
        self._digest = hashlib.sha256()
        self._decompressor = zlib.decompressobj(wbits=31)   # 31: expect a gzip header
        self._mid_member = False

    def feed(self, data):
        while data:
            self._mid_member = True
            self._digest.update(self._decompressor.decompress(data))
            if not self._decompressor.eof:
                return
            data = self._decompressor.unused_data
            self._decompressor = zlib.decompressobj(wbits=31)
            self._mid_member = False

    def hexdigest(self):
        if self._mid_member:
            raise _MirrorFailed("gzip stream ends early")
        return self._digest.hexdigest()


def _fetch(url, target, sha256, *, timeout, progress):
    """Download ``url`` to ``target`` if its decompressed content has ``sha256``.

    ``target`` appears complete or not at all: the bytes go to a temporary file that replaces it
    only after the checksum matched.
    """
    with urllib.request.urlopen(url, timeout=timeout) as response:
        length = response.headers.get("Content-Length", "")
        expected_bytes = int(length) if length.isdigit() else None
        digest = _GunzipDigest()
        received = 0
        with atomic_open(target, "wb") as out, \
                _progress_bar(target.name, expected_bytes, progress) as bar:
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                digest.feed(chunk)
                received += len(chunk)
                bar.update(len(chunk))
            # http.client returns b"" when the peer closes early instead of raising.
            if expected_bytes is not None and received != expected_bytes:
                raise _MirrorFailed(f"connection closed after {received} of "
                                    f"{expected_bytes} bytes")
            actual = digest.hexdigest()
            if actual != sha256:
                raise _MirrorFailed(f"checksum mismatch: sha256 of the uncompressed content is "
                                    f"{actual[:12]}…, expected {sha256[:12]}…")


def _progress_bar(name, total, progress):
    from tqdm import tqdm
    return tqdm(total=total, desc=name, unit="B", unit_scale=True, unit_divisor=1024,
                disable=not progress, file=sys.stderr)


def _failure_reason(error, timeout):
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError):
        # urllib wraps connection errors; the wrapped one says what happened.
        error = error.reason
    if isinstance(error, TimeoutError):
        return f"timed out after {timeout} s"
    if isinstance(error, http.client.IncompleteRead):
        return f"connection closed after {len(error.partial)} bytes"
    if isinstance(error, zlib.error):
        return f"corrupt gzip: {_one_line(error)}"
    return _one_line(error)


def download(dest_dir, mirrors=None, progress=True, timeout=30, *, checksums=None):
    """Fetch the four MNIST files into ``dest_dir``, verifying each against its checksum.

    A file already in ``dest_dir`` is kept when its uncompressed content matches its checksum
    (the file :func:`load` would read is the one checked). Otherwise ``<mirror><name>.gz`` is
    fetched from each mirror in turn until one delivers content with the right checksum. A failed
    attempt (HTTP error, dropped connection, short read, timeout, corrupt gzip, checksum mismatch)
    leaves nothing behind in ``dest_dir``.

    Parameters
    ----------
    dest_dir : str or os.PathLike
        Destination folder, created if needed.
    mirrors : sequence of str, optional
        Base URLs ending in ``/``; default :data:`MIRRORS`.
    progress : bool
        Show a progress bar per file on stderr.
    timeout : float
        Seconds a connection or read may stall before the mirror counts as failed.
    checksums : dict of str to str, optional
        sha256 of each file's uncompressed content by name; default :data:`SHA256`.

    Returns
    -------
    list of pathlib.Path
        The four verified files.

    Raises
    ------
    DataError
        Every mirror failed for some file (the message lists each mirror's reason).
    """
    dest_dir = Path(dest_dir)
    mirrors = MIRRORS if mirrors is None else tuple(mirrors)
    checksums = SHA256 if checksums is None else checksums
    if not mirrors:
        raise ValueError("mirrors must name at least one mirror, not be empty")
    paths = []
    for name in (name for split in SPLITS.values() for name in split):
        sha256 = checksums[name]
        try:
            present = find_file(dest_dir, name)
        except DataError:
            present = None
        if present is not None and _is_valid(present, sha256):
            if progress:
                print(f"{present}: present, checksum ok", file=sys.stderr)
            paths.append(present)
            continue
        target = dest_dir / f"{name}.gz"
        failures = []
        for mirror in mirrors:
            url = f"{mirror}{name}.gz"
            try:
                _fetch(url, target, sha256, timeout=timeout, progress=progress)
            except (_MirrorFailed, OSError, http.client.HTTPException, zlib.error,
                    ValueError) as e:
                if isinstance(e, urllib.error.HTTPError):
                    e.close()
                failures.append(f"{url}: {_failure_reason(e, timeout)}")
            else:
                paths.append(target)
                break
        else:
            raise DataError(f"{target}: download failed from every mirror: "
                            + "; ".join(failures))
    return paths
