"""fg.plot_history: a PNG of a fit history; matplotlib optional, its absence said clearly."""
import sys

import numpy as np
import pytest

import fusegrad as fg
from fusegrad.plot import smooth


def history(epochs=3, steps=20, evals=True):
    rng = np.random.default_rng(0)
    loss = list(2.0 * np.exp(-np.arange(epochs * steps) / 15) + 0.05 * rng.random(epochs * steps))
    h = {"loss": loss, "epoch_loss": [float(np.mean(loss[e * steps:(e + 1) * steps]))
                                      for e in range(epochs)], "eval": []}
    if evals:
        h["eval"] = [0.5, 0.7, 0.8][:epochs]
        h["val_loss"] = [1.0, 0.6, 0.5][:epochs]
    return h


@pytest.mark.parametrize("evals", [True, False])
def test_writes_a_png(tmp_path, evals):
    pytest.importorskip("matplotlib", reason="matplotlib is the examples extra")
    path = tmp_path / "h.png"
    assert fg.plot_history(history(evals=evals), path, title="t") == str(path)
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 2000


def test_needs_a_history_with_steps(tmp_path):
    with pytest.raises(ValueError, match="history"):
        fg.plot_history({"loss": []}, tmp_path / "h.png")


def test_without_matplotlib_the_error_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'fusegrad\[examples\]'"):
        fg.plot_history(history(), tmp_path / "h.png")


def test_smooth_is_a_trailing_moving_average():
    np.testing.assert_allclose(smooth([1, 2, 3, 4, 5], 2), [1, 1.5, 2.5, 3.5, 4.5])
    np.testing.assert_allclose(smooth([1, 2, 3], 1), [1, 2, 3])
