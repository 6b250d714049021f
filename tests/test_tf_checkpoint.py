"""The TensorBundle reader (models/tf_checkpoint.py) on a checkpoint written by TensorFlow itself.

``tests/golden/tf_checkpoint/`` comes from ``tools/golden/tf_checkpoint.py``: 40 seeded variables
of seven dtypes (one empty, one scalar), and what ``tf.train.load_checkpoint`` reads back.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from audiotag.core.errors import DataError
from audiotag.models.pretrained import read_state_dict
from audiotag.models.tf_checkpoint import crc32c, crc32c_many, read_checkpoint

FIXTURE = Path(__file__).parent / "golden" / "tf_checkpoint"
DATA = "ckpt.data-00000-of-00001"


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    for name in ("ckpt.index", DATA):
        shutil.copy(FIXTURE / name, tmp_path / name)
    return tmp_path


def expected() -> dict[str, np.ndarray]:
    with np.load(FIXTURE / "expected.npz") as data:
        return {k: data[k] for k in data.files}


def test_reads_what_tensorflow_wrote() -> None:
    ours, theirs = read_checkpoint(FIXTURE / "ckpt.index"), expected()
    assert sorted(ours) == sorted(theirs)  # every numeric variable; the object graph (a string) skipped
    for key, value in theirs.items():
        assert ours[key].dtype == value.dtype and ours[key].shape == value.shape, key
        np.testing.assert_array_equal(ours[key], value)
    assert {v.dtype for v in ours.values()} >= {np.dtype(t) for t in ("f4", "f8", "f2", "i8", "i4", "?")}


def test_read_state_dict_takes_an_index_file() -> None:
    state = read_state_dict(FIXTURE / "ckpt.index")
    key = "float32_matrix/.ATTRIBUTES/VARIABLE_VALUE"
    assert isinstance(state[key], torch.Tensor) and state[key].shape == (3, 5)


def test_crc32c() -> None:
    assert crc32c(b"123456789") == 0xE3069283  # the standard check value of CRC-32C
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, 5000, dtype=np.uint8).tobytes()

    def bytewise(b: bytes) -> int:  # the textbook loop, for lengths on both sides of a lane
        reg = 0xFFFFFFFF
        for byte in b:
            reg ^= byte
            for _ in range(8):
                reg = (reg >> 1) ^ (0x82F63B78 if reg & 1 else 0)
        return reg ^ 0xFFFFFFFF

    lengths = [0, 1, 7, 1023, 1024, 1025, 3000, 5000]
    assert crc32c_many([data[:n] for n in lengths]) == [bytewise(data[:n]) for n in lengths]


def test_a_corrupted_data_file_is_refused(copy: Path) -> None:
    data = bytearray((copy / DATA).read_bytes())
    data[100] ^= 0x01
    (copy / DATA).write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"variable '.+': CRC32C mismatch, the data file is corrupted"):
        read_checkpoint(copy / "ckpt.index")


def test_a_corrupted_index_is_refused(copy: Path) -> None:
    index = bytearray((copy / "ckpt.index").read_bytes())
    index[40] ^= 0x10
    (copy / "ckpt.index").write_bytes(bytes(index))
    with pytest.raises(
        DataError, match=r"ckpt.index: not a readable TensorFlow checkpoint index \(block .*CRC32C"
    ):
        read_checkpoint(copy / "ckpt.index")


def test_truncated_and_missing_files_are_named(copy: Path) -> None:
    (copy / DATA).write_bytes((copy / DATA).read_bytes()[:-10])
    with pytest.raises(DataError, match="the data file is truncated"):
        read_checkpoint(copy / "ckpt.index")
    (copy / DATA).unlink()
    with pytest.raises(DataError, match=f"{DATA}: the checkpoint's data shard is missing"):
        read_checkpoint(copy / "ckpt.index")
    (copy / "ckpt.index").write_bytes(b"not a table")
    with pytest.raises(DataError, match="magic number missing"):
        read_checkpoint(copy / "ckpt.index")
    with pytest.raises(DataError, match=r"expected a TensorFlow checkpoint's \.index"):
        read_checkpoint(copy / "nothing.index")


@pytest.mark.skipif(
    importlib.util.find_spec("musicnn") is None, reason="pip install --no-deps musicnn==0.1.0"
)
def test_optimizer_slots_are_left_out_unless_asked() -> None:
    spec = importlib.util.find_spec("musicnn")
    assert spec is not None and spec.submodule_search_locations
    index = Path(next(iter(spec.submodule_search_locations))) / "MTT_musicnn" / ".index"
    lean, full = read_checkpoint(index), read_checkpoint(index, slots=True)
    assert "conv2d/kernel/Adam" in full and "conv2d/kernel/Adam" not in lean
    assert len(lean) == 66 and len(full) == 150
    assert lean["conv2d/kernel"].shape == (7, 38, 1, 204)


def test_a_bundle_ships_the_index_with_its_data(tmp_path: Path) -> None:
    """``package`` copies a frozen model's weights file; a TF checkpoint needs its shard beside it,
    named as musicnn names them (``MTT_musicnn/.index``: no stem, no Path.suffix)."""
    from audiotag.stages.package import _ship_weights

    wheel = tmp_path / "wheel" / "MTT_musicnn"
    wheel.mkdir(parents=True)
    shutil.copy(FIXTURE / "ckpt.index", wheel / ".index")
    shutil.copy(FIXTURE / DATA, wheel / ".data-00000-of-00001")
    shipped = _ship_weights(wheel / ".index", "musicnn_mtt", tmp_path / "bundle")
    assert shipped["file"].startswith("weights/musicnn_mtt-") and shipped["file"].endswith(".index")
    state = read_state_dict(tmp_path / "bundle" / shipped["file"])
    assert sorted(state) == sorted(expected())


# ----------------------------------------------------------------------------- V1 (one file)

V1 = Path(__file__).parent / "golden" / "tf_checkpoint_v1"


def test_reads_a_v1_checkpoint_that_tensorflow_wrote() -> None:
    """``tools/golden/tf_checkpoint_v1.py``: TF's V1 Saver, the format of VGGish's vggish_model.ckpt."""
    from audiotag.models.tf_checkpoint import read_v1_checkpoint

    with np.load(V1 / "expected.npz") as data:
        theirs = {k: data[k] for k in data.files}
    ours = read_v1_checkpoint(V1 / "ckpt")
    assert sorted(ours) == sorted(k for k in theirs if not k.endswith("/Adam"))  # slots left out
    for key, value in ours.items():
        assert value.dtype == theirs[key].dtype and value.shape == theirs[key].shape, key
        np.testing.assert_array_equal(value, theirs[key])
    assert {v.dtype for v in ours.values()} >= {
        np.dtype(t) for t in ("f4", "f8", "f2", "i8", "i4", "i1", "u1", "?")
    }
    with_slots = read_v1_checkpoint(V1 / "ckpt", slots=True)
    np.testing.assert_array_equal(with_slots["net/float32_matrix/Adam"], theirs["net/float32_matrix/Adam"])


def test_read_state_dict_tells_a_v1_checkpoint_from_a_torch_ckpt(tmp_path: Path) -> None:
    """VGGish's file is named .ckpt, as PyTorch Lightning's are: the table footer decides."""
    shutil.copy(V1 / "ckpt", tmp_path / "vggish_model.ckpt")
    state = read_state_dict(tmp_path / "vggish_model.ckpt")
    assert state["net/float32_matrix"].shape == (3, 5) and state["net/int64_scalar"].dtype == torch.int64
    torch.save({"w": torch.ones(2)}, tmp_path / "lightning.ckpt")
    assert sorted(read_state_dict(tmp_path / "lightning.ckpt")) == ["w"]


def test_a_damaged_or_partitioned_v1_checkpoint_is_refused(tmp_path: Path) -> None:
    from audiotag.models.tf_checkpoint import read_v1_checkpoint

    with pytest.raises(DataError, match=r"variable 'split': saved in 2 slices \(a partitioned variable\)"):
        read_v1_checkpoint(V1 / "partitioned.ckpt")
    data = bytearray((V1 / "ckpt").read_bytes())
    data[200] ^= 0x01
    (tmp_path / "ckpt").write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"not a readable TensorFlow V1 checkpoint \(block .*CRC32C mismatch"):
        read_v1_checkpoint(tmp_path / "ckpt")
