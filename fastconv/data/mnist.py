"""MNIST from the four standard IDX ``.gz`` files, checked against the SHA-256 of their uncompressed bytes.

Gzip copies of MNIST differ from mirror to mirror (recompression), but the data inside do not, so the
check is on the uncompressed bytes. Loading decompresses anyway, so hashing them costs ~0.1 s: every load
is verified. Decoded arrays are kept in memory per (path, size, mtime), so building the dataset twice in
one process is free.

    train = MNIST(train=True)                        # $FASTCONV_DATA or ~/.cache/fastconv/data
    x = train.tensors(pad=True)[0]                  # float32 (60000, 1, 32, 32), normalised
"""
from __future__ import annotations

import gzip
import hashlib
import os
import tempfile
import urllib.request
import zlib

import numpy as np

from .. import shapes

__all__ = ["MNIST", "DatasetError", "default_root", "MIRRORS", "FILES", "MEAN", "STD", "normalize"]

MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)

# SHA-256 of the *uncompressed* IDX files: the same for every faithful copy of MNIST.
SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
FILES = {True: ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
         False: ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
MEAN, STD = 0.1307, 0.3081  # of the training images scaled to [0, 1]

_cache = {}  # (path, size, mtime_ns) -> decoded array
_urlopen = urllib.request.urlopen  # tests replace this to serve a local mirror


class DatasetError(RuntimeError):
    """A data file that is unreadable, truncated, corrupted or not what it claims to be."""


def default_root():
    """``$FASTCONV_DATA``, else ``~/.cache/fastconv/data``."""
    return os.environ.get("FASTCONV_DATA") or os.path.join(os.path.expanduser("~"), ".cache", "fastconv", "data")


def normalize(images, pad=False, dtype=np.float32):
    """uint8 ``(N, 28, 28)`` -> ``(N, 1, 28, 28)`` (or zero-padded by 2 to ``32x32``) float, standardised
    with MNIST's mean and std. Padding is added before standardising, so it matches the background."""
    images = shapes.as_array("images", images)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (N, H, W), got {images.dtype} of shape {images.shape}")
    dtype = shapes.float_dtype("dtype", dtype)
    p = 2 if shapes.flag("pad", pad) else 0
    lut = ((np.arange(256) / 255.0 - MEAN) / STD).astype(dtype)  # one table lookup per pixel
    out = np.full((images.shape[0], 1, images.shape[1] + 2 * p, images.shape[2] + 2 * p), lut[0], dtype=dtype)
    out[:, 0, p:p + images.shape[1], p:p + images.shape[2]] = lut[images]
    return out


def _advice(folder):
    return (f"delete it and run MNIST(root={os.path.dirname(folder) if os.path.basename(folder) == 'mnist' else folder!r}, "
            f"download=True), or copy the standard file from one of {list(MIRRORS)} into {folder}")


def _decode(raw, name, path):
    """Check the hash and the IDX header of uncompressed bytes and return the array (a copy)."""
    stem = name[:-3]
    digest = hashlib.sha256(raw).hexdigest()
    if digest != SHA256[stem]:
        raise DatasetError(f"{path}: the SHA-256 of its uncompressed contents is {digest}, expected "
                           f"{SHA256[stem]} (corrupted, truncated or not MNIST); "
                           f"{_advice(os.path.dirname(path))}")
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4).astype(np.int64)
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(tuple(dims)).copy()
    data.flags.writeable = False  # shared through the cache: nobody may change it
    return data


def _read(path, name):
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        folder = os.path.dirname(path)
        raise FileNotFoundError(
            f"MNIST file {name} not found in {folder}: pass download=True to fetch it, or copy the four "
            f"standard files from one of {list(MIRRORS)} into {folder} (or set FASTCONV_DATA)") from None
    key = (os.path.abspath(path), stat.st_size, stat.st_mtime_ns)
    if key not in _cache:
        try:
            with open(path, "rb") as f:
                raw = gzip.decompress(f.read())
        except (OSError, EOFError, zlib.error) as err:
            raise DatasetError(f"{path}: not a readable gzip file ({err}; truncated or corrupted); "
                               f"{_advice(os.path.dirname(path))}") from None
        _cache[key] = _decode(raw, name, path)
    return _cache[key]


def _download(name, folder, mirrors):
    """Fetch ``name`` from the first mirror that serves a verified copy; temp file, then os.replace."""
    os.makedirs(folder, exist_ok=True)
    errors = []
    for mirror in mirrors:
        url = mirror + name
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=folder)
        try:
            with os.fdopen(fd, "wb") as out, _urlopen(url, timeout=60) as response:
                payload = response.read()
                out.write(payload)
            _decode(gzip.decompress(payload), name, url)
            mask = os.umask(0)
            os.umask(mask)
            os.chmod(tmp, 0o666 & ~mask)  # mkstemp makes 0600 files
            os.replace(tmp, os.path.join(folder, name))
            return
        except Exception as err:  # any failure: note it, try the next mirror
            errors.append(f"{url}: {err}")
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    raise DatasetError(f"could not download {name} from any mirror:\n  " + "\n  ".join(errors))


class MNIST:
    """The MNIST training (60,000) or test (10,000) set.

    Files are looked up in ``root`` and then ``root/mnist``; with ``download=True`` missing ones are
    fetched into ``root/mnist`` from ``mirrors``, tried in turn. Attributes: ``images`` uint8
    ``(N, 28, 28)`` and ``labels`` int64 ``(N,)``.
    """

    def __init__(self, root=None, train=True, download=False, mirrors=MIRRORS):
        if root is not None and not isinstance(root, (str, os.PathLike)):
            raise TypeError(f"root must be a folder's path (str or os.PathLike), got {type(root).__name__}")
        if isinstance(mirrors, str) or not isinstance(mirrors, (tuple, list)) \
                or not all(isinstance(m, str) for m in mirrors):
            raise TypeError(f"mirrors must be a tuple of URL strings, got {mirrors!r}")
        download = shapes.flag("download", download)
        root = os.fspath(root) if root is not None else default_root()
        self.train = shapes.flag("train", train)
        names = FILES[self.train]
        folder = root if all(os.path.exists(os.path.join(root, n)) for n in names) else os.path.join(root, "mnist")
        if download:
            for name in names:
                if not os.path.exists(os.path.join(folder, name)):
                    _download(name, folder, mirrors)
        self.folder = folder
        self.images = _read(os.path.join(folder, names[0]), names[0])
        self.labels = _read(os.path.join(folder, names[1]), names[1]).astype(np.int64)

    def __len__(self):
        return len(self.labels)

    def tensors(self, pad=False, dtype=np.float32):
        """``(images, labels)``: images normalised float ``(N, 1, 28, 28)``, or ``32x32`` with ``pad``."""
        return normalize(self.images, pad, dtype), self.labels

    def __repr__(self):
        return f"MNIST({'train' if self.train else 'test'}, {len(self)} images, from {self.folder})"
