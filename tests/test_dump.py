"""step.dump: the fused step graph as DOT text (one box per kernel: kind, name, cost), drawn as
SVG where Graphviz's `dot` is installed, and a note saying how to draw it where it is not."""
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

import fusegrad as fg
from fusegrad.compiler import dump


def loss_fn(p, x, y):
    return fg.cross_entropy(fg.relu(x @ p["w"] + p["b"]) @ p["v"], y)


def trained_step():
    rng = np.random.default_rng(0)
    p = {"w": rng.normal(size=(4, 8)).astype(np.float32), "b": np.zeros(8, np.float32),
         "v": rng.normal(size=(8, 3)).astype(np.float32)}
    step = fg.train_step(loss_fn, fg.optim.SGD(lr=0.1))
    step(p, rng.normal(size=(5, 4)).astype(np.float32), np.array([0, 1, 2, 0, 1]))
    return step


def kernels_of(step):
    """(kind, name) of every kernel the step launches, as the fused printout shows them (at
    the top level: a multi kernel's parts, indented inside it, run in its one launch)."""
    return re.findall(r"^  %[^\n]*?= kernel\[[^\n]*?kind=([a-z+]+), name=(\w+)", step.ir("fused"),
                      re.M)


def test_fused_dot_has_one_box_per_kernel_with_kind_and_cost(tmp_path, monkeypatch):
    monkeypatch.setattr(dump, "render_svg", lambda path: None)  # the DOT text only
    step = trained_step()
    folder = Path(step.dump(tmp_path))
    text = (folder / "92_fused.dot").read_text()
    assert text.startswith("digraph")
    boxes = re.findall(r'n\d+ \[label="([^"]*)", shape=box', text)
    kernels = kernels_of(step)
    assert len(boxes) == len(kernels) >= 4
    for label, (kind, name) in zip(boxes, kernels):
        assert label.startswith(f"{kind}\\n{name}\\n") and " flop, " in label, label
    assert {"gemm", "elementwise", "multi"} <= {kind for kind, _ in kernels}
    assert re.search(r'label="multi\\nmulti_\w+\\n3 parts, ', text)  # the SGD update's 3
    assert re.search(r"in\d+ -> n\d+;", text) and re.search(r"n\d+ -> out\d+;", text)


def test_without_dot_the_dump_says_how_to_draw_it(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    folder = Path(trained_step().dump(tmp_path))
    assert not (folder / "92_fused.svg").exists()
    note = (folder / "92_fused.svg.txt").read_text()
    assert "graphviz" in note.lower() and "dot -Tsvg 92_fused.dot" in note


@pytest.mark.skipif(shutil.which("dot") is None,
                    reason="Graphviz's `dot` is not installed (apt-get install graphviz)")
def test_with_dot_the_dump_draws_the_fused_graph_as_svg(tmp_path):
    step = trained_step()
    folder = Path(step.dump(tmp_path))
    svg = (folder / "92_fused.svg").read_text()
    assert svg.lstrip().startswith(("<?xml", "<svg")) and "</svg>" in svg
    assert not (folder / "92_fused.svg.txt").exists()
    for _, name in kernels_of(step):
        assert name in svg
