import gzip

import numpy as np
import pytest

from jaxcomp.data import idx


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("gz", [True, False])
def test_roundtrip(tmp_path, dtype, gz):
    a = (np.random.default_rng(0).standard_normal((4, 3, 2)) * 50).astype(dtype)
    p = tmp_path / ("a.idx" + (".gz" if gz else ""))
    idx.write_idx(p, a)
    b = idx.read_idx(p)
    assert b.dtype == np.dtype(dtype) and b.shape == a.shape
    np.testing.assert_array_equal(a, b)


def _fixture(d, n=12, nlab=None, label_max=9):
    rng = np.random.default_rng(1)
    for prefix in ("train", "t10k"):
        idx.write_idx(
            d / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), np.uint8)
        )
        idx.write_idx(
            d / f"{prefix}-labels-idx1-ubyte.gz",
            rng.integers(0, label_max + 1, (nlab or n,)).astype(np.uint8),
        )


def test_fashion_fixture_and_padding(tmp_path):
    _fixture(tmp_path)
    x, y = idx.load_fashion_mnist("train", data_dir=tmp_path)
    assert x.shape == (12, 28, 28, 1) and x.dtype == np.uint8 and y.dtype == np.int32
    xp, _ = idx.load_fashion_mnist("test", data_dir=tmp_path, pad_to=32)
    assert xp.shape == (12, 32, 32, 1)
    x2, _ = idx.load_fashion_mnist("test", data_dir=tmp_path)
    np.testing.assert_array_equal(xp[:, 2:30, 2:30], x2)
    assert xp[:, :2].sum() == 0 and xp[:, 30:].sum() == 0


def test_env_var(tmp_path, monkeypatch):
    _fixture(tmp_path)
    monkeypatch.setenv("JAXCOMP_FASHION_MNIST_DIR", str(tmp_path))
    assert idx.load_fashion_mnist("train")[0].shape[0] == 12


def test_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        idx.load_fashion_mnist("train", data_dir=tmp_path)
    with pytest.raises(ValueError, match="split"):
        idx.load_fashion_mnist("val", data_dir=tmp_path)
    p = tmp_path / "t.gz"
    idx.write_idx(p, np.zeros((10, 5), np.uint8))
    raw = gzip.decompress(p.read_bytes())
    (tmp_path / "trunc").write_bytes(raw[:-7])
    with pytest.raises(ValueError, match="trunc.*truncated"):
        idx.read_idx(tmp_path / "trunc")
    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01")
    with pytest.raises(ValueError, match="bad magic"):
        idx.read_idx(tmp_path / "bad")
    (tmp_path / "badgz.gz").write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="badgz.gz"):
        idx.read_idx(tmp_path / "badgz.gz")
    d = tmp_path / "mismatch"
    d.mkdir()
    _fixture(d, n=12, nlab=11)
    with pytest.raises(ValueError, match="12 images but .* 11 labels"):
        idx.load_fashion_mnist("train", data_dir=d)
    d = tmp_path / "badlabel"
    d.mkdir()
    _fixture(d, label_max=40)
    with pytest.raises(ValueError, match="outside"):
        idx.load_fashion_mnist("train", data_dir=d)


@pytest.mark.skipif(not (idx.epath.Path(idx.FASHION_MNIST_DIR)).exists(), reason="no Debian data")
def test_real_fashion_mnist():
    x, y = idx.load_fashion_mnist("test")
    assert x.shape == (10000, 28, 28, 1)
    np.testing.assert_array_equal(np.bincount(y), [1000] * 10)
