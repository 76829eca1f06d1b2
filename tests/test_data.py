"""MNIST (verified IDX files, local-mirror downloads), MNIST-1D (offline, equal to the published set),
the DataLoader and random shifts."""
import gzip
import os
import random
import shutil

import numpy as np
import pytest

from fastconv.data import MNIST, MNIST1D, DataLoader, DatasetError, mnist, mnist1d, random_shift

TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
TEST_FILES = mnist.FILES[False]


@pytest.fixture
def test_copy(tmp_path, data_root):
    """The two (small) test-set files copied into tmp_path/mnist, free to damage."""
    folder = tmp_path / "mnist"
    folder.mkdir()
    for name in TEST_FILES:
        shutil.copy(os.path.join(data_root, "mnist", name), folder / name)
    return tmp_path


# ------------------------------------------------------------------------------------ MNIST
@pytest.mark.parametrize("train,n,counts", [(True, 60000, TRAIN_COUNTS), (False, 10000, TEST_COUNTS)])
def test_mnist_arrays(data_root, train, n, counts):
    ds = MNIST(data_root, train=train)
    assert ds.images.shape == (n, 28, 28) and ds.images.dtype == np.uint8
    assert ds.labels.shape == (n,) and ds.labels.dtype == np.int64
    assert np.bincount(ds.labels).tolist() == counts and len(ds) == n
    assert not ds.images.flags.writeable  # shared through the in-memory cache


def test_mnist_finds_root_or_root_mnist_and_env(data_root, monkeypatch):
    direct = MNIST(os.path.join(data_root, "mnist"), train=False)
    nested = MNIST(data_root, train=False)
    monkeypatch.setenv("FASTCONV_DATA", data_root)
    assert mnist.default_root() == data_root
    default = MNIST(train=False)
    assert np.array_equal(direct.labels, nested.labels) and np.array_equal(default.labels, nested.labels)
    monkeypatch.delenv("FASTCONV_DATA")
    assert mnist.default_root().endswith(os.path.join(".cache", "fastconv", "data"))


def test_normalised_and_padded_tensors(data_root):
    ds = MNIST(data_root, train=False)
    x, y = ds.tensors()
    assert x.shape == (10000, 1, 28, 28) and x.dtype == np.float32 and y is ds.labels
    expected = (ds.images[:50] / 255.0 - mnist.MEAN) / mnist.STD
    np.testing.assert_allclose(x[:50, 0], expected, rtol=1e-6, atol=1e-6)
    assert abs(float(x.mean())) < 0.05 and abs(float(x.std()) - 1) < 0.05
    padded, _ = ds.tensors(pad=True)
    assert padded.shape == (10000, 1, 32, 32)
    assert np.array_equal(padded[:, :, 2:30, 2:30], x)
    border = np.ones((32, 32), bool)
    border[2:30, 2:30] = False
    assert np.all(padded[:, 0][:, border] == np.float32(-mnist.MEAN / mnist.STD))  # background level


def test_missing_file_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"t10k-images-idx3-ubyte\.gz.*download=True"):
        MNIST(tmp_path, train=False)


def test_truncated_file_is_a_clear_error(test_copy):
    path = test_copy / "mnist" / TEST_FILES[0]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match=r"t10k-images-idx3-ubyte\.gz.*(truncated|corrupted).*download=True"):
        MNIST(test_copy, train=False)


def test_corrupted_file_is_a_clear_error(test_copy):
    path = test_copy / "mnist" / TEST_FILES[1]
    data = bytearray(path.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 8):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match=r"t10k-labels-idx1-ubyte\.gz"):
        MNIST(test_copy, train=False)


def test_valid_gzip_with_wrong_contents_fails_the_hash(test_copy):
    path = test_copy / "mnist" / TEST_FILES[1]
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[100] = (raw[100] + 1) % 10  # one label changed: the file still decodes
    path.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(DatasetError, match="SHA-256"):
        MNIST(test_copy, train=False)


def test_download_from_local_mirror(tmp_path, data_root):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for name in TEST_FILES:
        shutil.copy(os.path.join(data_root, "mnist", name), mirror / name)
    root = tmp_path / "root"
    ds = MNIST(root, train=False, download=True,
               mirrors=((tmp_path / "absent").as_uri() + "/", mirror.as_uri() + "/"))
    assert np.bincount(ds.labels).tolist() == TEST_COUNTS
    assert sorted(os.listdir(root / "mnist")) == sorted(TEST_FILES)  # no temporary files left


def test_download_tries_the_usual_mirrors_in_turn_and_verifies(tmp_path, data_root, monkeypatch):
    """The default mirrors, served by a fake opener: the first fails, the second serves a corrupted
    copy, the third a good one; nothing touches the network."""
    asked = []

    class Response:
        def __init__(self, payload):
            self.payload = payload

        def read(self):
            return self.payload

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    def fake_urlopen(url, timeout=None):
        asked.append(url)
        name = url.rsplit("/", 1)[1]
        good = open(os.path.join(data_root, "mnist", name), "rb").read()
        if url.startswith(mnist.MIRRORS[0]):
            raise OSError("connection refused")
        if url.startswith(mnist.MIRRORS[1]):
            return Response(good[: len(good) // 3])
        return Response(good)

    monkeypatch.setattr(mnist, "_urlopen", fake_urlopen)
    ds = MNIST(tmp_path, train=False, download=True)
    assert len(ds) == 10000
    assert asked[:3] == [m + TEST_FILES[0] for m in mnist.MIRRORS]


def test_download_failing_everywhere_leaves_nothing(tmp_path):
    with pytest.raises(DatasetError, match="could not download t10k-images"):
        MNIST(tmp_path, train=False, download=True, mirrors=((tmp_path / "absent").as_uri() + "/",))
    assert os.listdir(tmp_path / "mnist") == []


# ---------------------------------------------------------------------------------- MNIST-1D
needs_mnist1d = pytest.mark.usefixtures("mnist1d_package")


@needs_mnist1d
def test_mnist1d_regenerates_the_published_set(data_root, tmp_path, monkeypatch):
    monkeypatch.setenv("FASTCONV_CACHE_DIR", str(tmp_path))
    frozen = np.load(os.path.join(data_root, "mnist1d", "mnist1d_data.npz"))
    np_state, py_state = np.random.get_state()[1].copy(), random.getstate()
    data = mnist1d.generate(cache=False, num_samples=5000, final_seq_length=40, seed=42)
    assert np.array_equal(np.random.get_state()[1], np_state) and random.getstate() == py_state
    assert data["x"].shape == (4000, 40) and data["x_test"].shape == (1000, 40)
    np.testing.assert_allclose(data["x"], frozen["x"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(data["x_test"], frozen["x_test"], rtol=0, atol=1e-12)
    assert np.array_equal(data["y"], frozen["y"]) and np.array_equal(data["y_test"], frozen["y_test"])
    assert mnist1d.checksum(data) == mnist1d.PUBLISHED_SHA256
    x, y = MNIST1D().tensors()  # from the caches just written
    assert x.shape == (4000, 1, 40) and x.dtype == np.float32 and y.dtype == np.int64
    assert np.array_equal(x[:, 0], data["x"].astype(np.float32))


@needs_mnist1d
def test_mnist1d_disk_cache_is_used_and_survives_damage(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTCONV_CACHE_DIR", str(tmp_path))
    small = dict(num_samples=50, final_seq_length=40, seed=7)
    first = mnist1d.generate(cache=False, **small)
    (path,) = tmp_path.glob("mnist1d-*.npz")
    make = mnist1d._make
    monkeypatch.setattr(mnist1d, "_cache", {})  # a new process: memory cache empty
    monkeypatch.setattr(mnist1d, "_make", lambda overrides: pytest.fail("regenerated despite the cache"))
    again = mnist1d.generate(**small)
    assert all(np.array_equal(first[k], again[k]) for k in mnist1d.ARRAYS)
    path.write_bytes(path.read_bytes()[:100])  # truncated: regenerate rather than fail
    monkeypatch.setattr(mnist1d, "_cache", {})
    monkeypatch.setattr(mnist1d, "_make", make)
    third = mnist1d.generate(**small)
    assert np.array_equal(first["x"], third["x"])


def test_mnist1d_checksum_is_the_frozen_published_set(data_root):
    """The recorded SHA-256 is that of the paper's frozen arrays; it ignores last-bit float differences
    (platforms) and sees any change of a signal or a label."""
    with np.load(os.path.join(data_root, "mnist1d", "mnist1d_data.npz")) as f:
        frozen = {name: f[name] for name in mnist1d.CHECKED}
    assert mnist1d.checksum(frozen) == mnist1d.PUBLISHED_SHA256
    assert mnist1d.checksum({**frozen, "x": frozen["x"] * (1 + 1e-15)}) == mnist1d.PUBLISHED_SHA256
    x = frozen["x"].copy()
    x[7, 3] += 1e-4
    assert mnist1d.checksum({**frozen, "x": x}) != mnist1d.PUBLISHED_SHA256
    y = frozen["y_test"].copy()
    y[0] = (y[0] + 1) % 10
    assert mnist1d.checksum({**frozen, "y_test": y}) != mnist1d.PUBLISHED_SHA256


@needs_mnist1d
def test_mnist1d_from_a_changed_generator_is_a_clear_error(data_root, tmp_path, monkeypatch):
    """The generator (here serving the frozen arrays, changed or not) is checked; a cache that is not the
    published set is regenerated, not used."""
    import mnist1d.data as generator
    with np.load(os.path.join(data_root, "mnist1d", "mnist1d_data.npz")) as f:
        frozen = {name: f[name] for name in mnist1d.ARRAYS}
    changed = {**frozen, "x_test": frozen["x_test"] + 0.01}
    monkeypatch.setenv("FASTCONV_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(mnist1d, "_cache", {})
    monkeypatch.setattr(generator, "make_dataset", lambda args: dict(changed))
    with pytest.raises(DatasetError, match="mnist1d generator changed"):
        MNIST1D()
    assert not list(tmp_path.glob("mnist1d-*.npz"))  # nothing cached
    mnist1d._save_cached(mnist1d._cache_path(mnist1d.PUBLISHED), changed)  # a stale cache
    monkeypatch.setattr(generator, "make_dataset", lambda args: dict(frozen))
    assert np.array_equal(MNIST1D(train=False).x, frozen["x_test"].astype(np.float32))


@needs_mnist1d
def test_mnist1d_rejects_unknown_arguments():
    with pytest.raises(ValueError, match="unknown MNIST-1D arguments"):
        MNIST1D(colour="red")


# -------------------------------------------------------------------------------- DataLoader
def test_loader_in_order_gives_views_and_last_batch():
    x, y = np.arange(10 * 3).reshape(10, 3), np.arange(10)
    batches = list(DataLoader(x, y, batch_size=4))
    assert [len(b[1]) for b in batches] == [4, 4, 2]
    assert batches[0][0].base is x or np.shares_memory(batches[0][0], x)
    assert [len(b[1]) for b in DataLoader(x, y, batch_size=4, drop_last=True)] == [4, 4]
    assert len(DataLoader(x, batch_size=4)) == 3 and len(DataLoader(x, batch_size=4, drop_last=True)) == 2


@pytest.mark.parametrize("reuse", [False, True])
def test_loader_shuffles_every_sample_once_reproducibly(reuse):
    x, y = np.arange(23 * 2, dtype=np.float32).reshape(23, 2), np.arange(23)
    loader = DataLoader(x, y, batch_size=5, shuffle=True, seed=3, reuse_buffers=reuse)
    epochs = []
    for _ in range(2):
        seen = []
        for xb, yb in loader:
            assert np.array_equal(xb[:, 0], 2 * yb)  # rows stay aligned
            seen.extend(yb.tolist())
        assert sorted(seen) == list(range(23))
        epochs.append(seen)
    assert epochs[0] != epochs[1]  # a new permutation per epoch
    again = DataLoader(x, y, batch_size=5, shuffle=True, seed=3)
    assert [yb.tolist() for _, yb in again] == [epochs[0][i:i + 5] for i in range(0, 23, 5)]


def test_loader_reuses_buffers_and_resumes_from_state():
    x = np.arange(12, dtype=np.float32)
    loader = DataLoader(x, batch_size=4, shuffle=True, seed=0, reuse_buffers=True)
    buffers = {id(b[0].base if b[0].base is not None else b[0]) for b in loader}
    assert len(buffers) == 1
    state = loader.state_dict()
    expected = [b[0].copy() for b in loader]
    other = DataLoader(x, batch_size=4, shuffle=True, seed=99)
    other.load_state_dict(state)
    assert all(np.array_equal(a, b[0]) for a, b in zip(expected, other))


@pytest.mark.parametrize("args,kwargs,match", [((), {}, "at least one"),
                                               ((np.ones(3), np.ones(4)), {}, "first dimension"),
                                               ((np.ones(3),), {"batch_size": 0}, "batch_size"),
                                               ((np.ones(3),), {"batch_size": 4, "drop_last": True}, "no batch")])
def test_loader_errors(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        DataLoader(*args, **kwargs)


# ------------------------------------------------------------------------------ random shifts
def test_random_shift_translates_each_image():
    rng = np.random.default_rng(0)
    images = rng.standard_normal((40, 2, 6, 7)).astype(np.float32)
    out = random_shift(images, 2, np.random.default_rng(5), fill=-9.0)
    shifts = np.random.default_rng(5).integers(0, 25, 40)
    for img, res, code in zip(images, out, shifts):  # the test may loop; the function does not
        dy, dx = code // 5 - 2, code % 5 - 2
        padded = np.pad(img, ((0, 0), (2, 2), (2, 2)), constant_values=-9.0)
        assert np.array_equal(res, padded[:, 2 - dy:2 - dy + 6, 2 - dx:2 - dx + 7])
    assert len(np.unique(shifts)) > 15
    assert np.array_equal(random_shift(images, 0, rng), images)
    with pytest.raises(ValueError, match="max_shift"):
        random_shift(images, -1, rng)
