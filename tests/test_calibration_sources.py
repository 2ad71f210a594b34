"""Each calibration source on real files written here: npz, npy/npz directories, images, callables, synthetic."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from modelport.calibration import (
    CalibrationSet,
    CalibrationWarning,
    open_calibration,
    open_evaluation,
    open_source,
)
from modelport.errors import BadInput
from modelport.specs import TensorSpec

IMAGE = [TensorSpec("x", ("batch", 3, 4, 4), "float32")]
TEXT = [TensorSpec("input_ids", ("batch", "seq"), "int64"), TensorSpec("attention_mask", ("batch", "seq"), "int64")]


@pytest.fixture
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.standard_normal((40, 3, 4, 4)).astype(np.float32), np.arange(40) % 4


def _stacked(calibration: CalibrationSet, name: str = "x") -> np.ndarray:
    return np.concatenate([s[name] for s in calibration.samples()])


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed], ids=["stored", "compressed"])
def test_npz_gives_every_sample_with_labels_and_reads_rows_lazily(tmp_path, data, save):
    x, y = data
    save(tmp_path / "calib.npz", x=x, labels=y)
    calibration = open_calibration(str(tmp_path / "calib.npz"), IMAGE)
    assert len(calibration) == 40 and calibration.source.kind == "npz"
    np.testing.assert_array_equal(_stacked(calibration), x)
    np.testing.assert_array_equal(calibration.labels(), y)
    expected = "StoredArray" if save is np.savez else "DeflatedArray"
    assert type(calibration.source.arrays["x"]).__name__ == expected


def test_npz_of_several_inputs_keyed_by_name(tmp_path):
    ids = np.random.default_rng(1).integers(0, 1000, (12, 16))
    mask = np.ones((12, 16), dtype=np.int64)
    np.savez(tmp_path / "text.npz", input_ids=ids, attention_mask=mask)
    calibration = open_calibration(str(tmp_path / "text.npz"), TEXT)
    batch = next(calibration.batches(5))
    assert batch["input_ids"].shape == (5, 16) and batch["attention_mask"].dtype == np.int64
    np.testing.assert_array_equal(batch["input_ids"], ids[:5])
    assert calibration.labels() is None


def test_unnamed_npy_and_npz_arrays_feed_a_one_input_model(tmp_path, data):
    x, _ = data
    np.save(tmp_path / "x.npy", x)
    np.savez(tmp_path / "positional.npz", x)  # stored as arr_0
    for name in ("x.npy", "positional.npz"):
        np.testing.assert_array_equal(_stacked(open_calibration(str(tmp_path / name), IMAGE)), x)


def test_npy_directory_mixes_single_samples_and_batches(tmp_path, data):
    x, _ = data
    for i in range(8):
        np.save(tmp_path / f"sample_{i:02}.npy", x[i])  # one sample, no batch axis
    np.save(tmp_path / "z_batch.npy", x[8:40])  # one batch of 32
    calibration = open_calibration(str(tmp_path), IMAGE)
    assert len(calibration) == 40 and calibration.source.kind == "npy-dir"
    np.testing.assert_array_equal(_stacked(calibration), x)
    assert calibration.where(10) == f"{tmp_path / 'z_batch.npy'} row 2 (sample 10)"


def test_npz_directory_with_class_subfolders_gives_folder_labels(tmp_path, data):
    x, y = data
    for i in range(40):
        folder = tmp_path / ("cat", "dog", "eel", "fox")[y[i]]
        folder.mkdir(exist_ok=True)
        np.savez_compressed(folder / f"{i:02}.npz", x=x[i][None])
    calibration = open_calibration(str(tmp_path), IMAGE)
    assert calibration.source.classes == ["cat", "dog", "eel", "fox"]
    labels = calibration.labels()
    by_label = {int(lbl): s["x"] for lbl, s in zip(labels, calibration.samples(), strict=True)}
    assert sorted(by_label) == [0, 1, 2, 3]
    assert sorted(labels.tolist()) == sorted(y.tolist())


def test_npz_directory_carries_per_file_labels(tmp_path, data):
    x, y = data
    for i in range(0, 40, 10):
        np.savez(tmp_path / f"batch_{i:02}.npz", x=x[i:i + 10], label=y[i:i + 10])
    calibration = open_calibration(str(tmp_path), IMAGE)
    np.testing.assert_array_equal(calibration.labels(), y)
    np.testing.assert_array_equal(_stacked(calibration), x)


def _png_folder(root: Path, per_class: int = 3, size: tuple[int, int] = (30, 40)) -> dict[str, list[np.ndarray]]:
    rng = np.random.default_rng(2)
    pixels: dict[str, list[np.ndarray]] = {}
    for name in ("ants", "bees"):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            Image.fromarray(image).save(root / name / f"{i}.png")
            pixels.setdefault(name, []).append(image)
    return pixels


def test_image_folder_center_crops_normalises_and_labels_by_class(tmp_path):
    pixels = _png_folder(tmp_path / "imgs", size=(24, 40))  # 24x40 (HxW): cover-resize is a no-op here
    calibration = open_calibration(f"images:{tmp_path / 'imgs'}?mean=imagenet,std=imagenet",
                                   [TensorSpec("x", (1, 3, 24, 24), "float32")])
    assert len(calibration) == 6 and calibration.labels().tolist() == [0, 0, 0, 1, 1, 1]
    assert calibration.source.classes == ["ants", "bees"]
    first = next(calibration.samples())["x"]
    crop = pixels["ants"][0][:, 8:32].astype(np.float32) / 255  # center 24 of 40 columns
    expected = ((crop - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]).transpose(2, 0, 1)[None]
    np.testing.assert_allclose(first, expected, rtol=1e-5, atol=1e-5)
    assert "mean=0.485/0.456/0.406" in calibration.describe()["preprocess"]


def test_image_folder_exact_resize_bgr_nhwc_unscaled(tmp_path):
    _png_folder(tmp_path / "imgs")
    calibration = open_calibration(f"images:{tmp_path / 'imgs'}?resize=16x16,layout=nhwc,channels=bgr,scale=1",
                                   [TensorSpec("x", ("batch", 16, 16, 3), "float32")])
    sample = next(calibration.samples())["x"]
    with Image.open(tmp_path / "imgs" / "ants" / "0.png") as image:
        expected = np.asarray(image.resize((16, 16), Image.Resampling.BILINEAR))[..., ::-1]
    np.testing.assert_array_equal(sample, expected[None].astype(np.float32))


def test_image_folder_feeds_gray_integer_inputs_raw_pixels(tmp_path):
    _png_folder(tmp_path / "imgs")
    calibration = open_calibration(f"images:{tmp_path / 'imgs'}", [TensorSpec("x", (1, 1, 8, 8), "uint8")])
    sample = next(calibration.samples())["x"]
    assert sample.shape == (1, 1, 8, 8) and sample.dtype == np.uint8
    assert "channels=gray" in calibration.describe()["preprocess"]


@pytest.mark.parametrize(("options", "message"), [
    ("crop=20", "crop=20x20, but the model's input x:1x3x24x24:float32 takes 24x24"),
    ("foo=1", "unknown preprocessing key 'foo'"),
    ("mean=1/2/3/4", "mean has 4 values; the input has 3 channels"),
    ("resize=10", "resize=10 is smaller than the crop 24x24"),
    ("layout=nchwx", "layout='nchwx' is not nchw or nhwc"),
    ("channels=gray", "channels=gray does not fit the input"),
    ("std=0", "has a zero"),
])
def test_image_preprocessing_spec_errors_name_the_key(tmp_path, options, message):
    _png_folder(tmp_path / "imgs")
    with pytest.raises(BadInput, match="images:") as info:
        open_calibration(f"images:{tmp_path / 'imgs'}?{options}", [TensorSpec("x", (1, 3, 24, 24), "float32")])
    assert message in str(info.value)


def test_unreadable_image_names_the_file(tmp_path):
    _png_folder(tmp_path / "imgs")
    (tmp_path / "imgs" / "ants" / "broken.png").write_bytes(b"not a png")
    calibration = open_calibration(f"images:{tmp_path / 'imgs'}", [TensorSpec("x", (1, 3, 24, 24), "float32")])
    with pytest.raises(BadInput, match=r"broken\.png \(sample 3\) is not a readable image"):
        calibration.fingerprint  # noqa: B018


CALLABLES = '''
import numpy as np
from pathlib import Path

CALLS = Path(__file__).with_suffix(".calls")

def _data():
    rng = np.random.default_rng(0)
    return rng.standard_normal((40, 3, 4, 4)).astype(np.float32), np.arange(40) % 4

def dicts():
    CALLS.write_text(str(int(CALLS.read_text()) + 1) if CALLS.exists() else "1")
    x, y = _data()
    for i in range(40):
        yield {"x": x[i][None], "label": y[i]}

def batches():
    x, y = _data()
    for i in range(0, 40, 16):
        yield {"x": x[i:i + 16], "labels": y[i:i + 16]}

def tuples():
    x, y = _data()
    return [(x[i], y[i]) for i in range(40)]

def array():
    return _data()[0]

def torch_dataset():
    import torch
    from torch.utils.data import TensorDataset

    x, y = _data()
    return TensorDataset(torch.from_numpy(x), torch.from_numpy(y))

def empty():
    return iter(())

def broken():
    yield {"x": np.zeros((1, 3, 4, 4), np.float32)}
    raise RuntimeError("disk on fire")
'''


@pytest.fixture
def callables(tmp_path) -> Path:
    path = tmp_path / "calib_fns.py"
    path.write_text(CALLABLES)
    return path


@pytest.mark.parametrize("fn", ["dicts", "batches", "tuples", "array", "torch_dataset"])
def test_callable_sources_yield_the_same_samples_whatever_the_item_form(callables, data, fn):
    x, y = data
    calibration = open_calibration(f"{callables}:{fn}", IMAGE)
    assert len(calibration) == 40
    np.testing.assert_array_equal(_stacked(calibration), x)
    np.testing.assert_array_equal(calibration.labels(), None if fn == "array" else y)


def test_callable_is_streamed_by_calling_it_again_not_materialised(callables, data):
    calibration = open_calibration(f"{callables}:dicts", IMAGE)
    assert not hasattr(calibration.source, "_items") or calibration.source._items is None
    calls = callables.with_suffix(".calls")
    assert calls.read_text() == "1"  # counted in one pass
    list(calibration.batches(8))
    assert calls.read_text() == "2"  # one more pass, in order
    calibration.fingerprint  # noqa: B018
    assert calls.read_text() == "3"


def test_callable_errors_name_the_callable_and_item(callables):
    with pytest.raises(BadInput, match="returned no samples"):
        open_calibration(f"{callables}:empty", IMAGE)
    with pytest.raises(BadInput, match="raised RuntimeError at item 1: disk on fire"):
        open_calibration(f"{callables}:broken", IMAGE)
    with pytest.raises(BadInput, match="has no attribute 'nope'"):
        open_calibration(f"{callables}:nope", IMAGE)


def test_package_module_callable_reference(digits_test_data):
    calibration = open_evaluation("modelport.examples:digits_evaluation", [TensorSpec("x", ("batch", 1, 8, 8))])
    _, labels = digits_test_data
    assert len(calibration) == len(labels) == 497
    np.testing.assert_array_equal(calibration.labels(), labels)


def test_synthetic_warns_that_int8_on_it_means_nothing():
    with pytest.warns(CalibrationWarning, match="say nothing about accuracy"):
        calibration = open_calibration("synthetic:16", TEXT)
    assert calibration.synthetic and len(calibration) == 16
    batch = next(calibration.batches(4))
    assert batch["input_ids"].dtype == np.int64 and batch["input_ids"].shape == (4, 1)


def test_open_calibration_draws_a_few_hundred_from_large_sources_open_evaluation_keeps_all(tmp_path):
    np.savez(tmp_path / "big.npz", x=np.zeros((1000, 3, 4, 4), np.float32))
    assert len(open_calibration(str(tmp_path / "big.npz"), IMAGE)) == 300
    assert len(open_calibration(str(tmp_path / "big.npz"), IMAGE, size=1000)) == 1000
    assert len(open_evaluation(str(tmp_path / "big.npz"), IMAGE)) == 1000


@pytest.mark.parametrize(("text", "message"), [
    ("missing.npz", "does not exist"),
    ("nowhere", "Cannot read calibration source 'nowhere' (no such file or directory)"),
    ("synthetic:zero", "Write synthetic or synthetic:N"),
    ("images:", "images: needs a directory"),
])
def test_unreadable_source_names_are_bad_input(text, message):
    with pytest.raises(BadInput) as info:
        open_source(text, IMAGE)
    assert message in str(info.value)


def test_corrupt_npz_and_object_arrays_are_bad_input(tmp_path):
    (tmp_path / "bad.npz").write_bytes(b"PK not really")
    with pytest.raises(BadInput, match=r"not a readable \.npz archive"):
        open_source(str(tmp_path / "bad.npz"), IMAGE)
    np.savez(tmp_path / "objects.npz", x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(BadInput, match="holds Python objects"):
        open_source(str(tmp_path / "objects.npz"), IMAGE)


def test_truncated_npy_is_bad_input_naming_the_file(tmp_path, data):
    np.save(tmp_path / "x.npy", data[0])
    raw = (tmp_path / "x.npy").read_bytes()
    (tmp_path / "x.npy").write_bytes(raw[: len(raw) - 100])
    calibration = open_calibration(str(tmp_path / "x.npy"), IMAGE)
    with pytest.raises(BadInput, match=r"x\.npy is truncated"):
        list(calibration.samples())


def test_mixed_flat_files_and_class_folders_is_ambiguous(tmp_path, data):
    np.save(tmp_path / "loose.npy", data[0][0])
    (tmp_path / "cls").mkdir()
    np.save(tmp_path / "cls" / "one.npy", data[0][1])
    with pytest.raises(BadInput, match="both directly inside it"):
        open_source(str(tmp_path), IMAGE)


def test_deflated_member_streams_forward_and_rewinds(tmp_path, data):
    x, _ = data
    with zipfile.ZipFile(tmp_path / "c.npz", "w", zipfile.ZIP_DEFLATED) as archive, archive.open("x.npy", "w") as f:
        np.lib.format.write_array(f, x)
    source = open_source(str(tmp_path / "c.npz"), IMAGE)
    np.testing.assert_array_equal(source.read(30)["x"][0], x[30])
    np.testing.assert_array_equal(source.read(5)["x"][0], x[5])  # backwards: the stream restarts
    np.testing.assert_array_equal(source.read(39)["x"][0], x[39])
