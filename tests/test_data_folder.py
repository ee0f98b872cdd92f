"""Image folders and TFDS catalog datasets: GANsformer preprocessing, corrupt files, clear errors."""

import importlib.util
import io
import logging
import os

import jax
import numpy as np
import PIL.Image
import pytest
import tensorflow_datasets as tfds
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from ganjax import data
from ganjax.config import base_config
from ganjax.data import preprocess


def solid(mode, size, color):
    return PIL.Image.new(mode, size, color)


def make_folder(root):
    """Mixed sizes, modes and formats, one nested, one corrupt and one truncated file, one non-image."""
    os.makedirs(root / "nested" / "deeper")
    files = {
        "red_rgb.png": solid("RGB", (40, 30), (255, 0, 0)),
        "gray_l.png": solid("L", (33, 33), 100),
        "opaque_rgba.png": solid("RGBA", (20, 50), (0, 0, 255, 255)),
        "clear_rgba.png": solid("RGBA", (24, 24), (255, 255, 255, 0)),  # transparent -> black
        "palette_p.png": solid("RGB", (16, 16), (0, 255, 0)).convert("P"),
        "green.jpg": solid("RGB", (64, 48), (0, 200, 0)),
        "nested/yellow.webp": solid("RGB", (50, 20), (255, 255, 0)),
        "nested/deeper/UPPER.PNG": solid("RGB", (8, 8), (10, 20, 30)),
        "gray_la.png": solid("LA", (17, 9), (200, 255)),
    }
    for name, img in files.items():
        img.save(root / name)
    (root / "corrupt.jpg").write_bytes(b"definitely not a jpeg" * 10)
    buf = io.BytesIO()
    PIL.Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "png")
    (root / "nested" / "truncated.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (root / "notes.txt").write_text("not an image")
    return files


EXPECTED = {  # colour of the image centre after preprocessing (aspect 1: centre crop, no padding)
    "red_rgb.png": (255, 0, 0), "gray_l.png": (100, 100, 100), "opaque_rgba.png": (0, 0, 255),
    "clear_rgba.png": (0, 0, 0), "palette_p.png": (0, 255, 0), "green.jpg": (0, 200, 0),
    "nested/yellow.webp": (255, 255, 0), "nested/deeper/UPPER.PNG": (10, 20, 30), "gray_la.png": (200, 200, 200),
}


def folder_config(folder, data_dir, resolution=16, aspect=1.0):
    c = base_config()
    c.model.resolution, c.train.batch_size = resolution, 8
    c.data.dataset, c.data.folder, c.data.data_dir, c.data.aspect_ratio = "folder", str(folder), str(data_dir), aspect
    return c


def test_folder_preparation_shapes_values_and_skipped_files(tmp_path, caplog):
    folder = tmp_path / "photos"
    make_folder(folder)
    with caplog.at_level(logging.WARNING):
        builder = data.prepare(folder_config(folder, tmp_path / "tfds"))
    log = caplog.text
    assert "corrupt.jpg" in log and "truncated.png" in log and "skipped 2 of 11 files" in log
    source = builder.as_data_source(split="train")
    assert len(source) == len(EXPECTED)
    stored = {source[i]["path"].decode() if isinstance(source[i]["path"], bytes) else source[i]["path"]:
              source[i]["image"] for i in range(len(source))}
    assert set(stored) == set(EXPECTED)
    for name, rgb in EXPECTED.items():
        img = stored[name]
        assert img.shape == (16, 16, 3) and img.dtype == np.uint8
        tol = 3 if name.endswith((".jpg", ".webp")) else 0  # lossy formats
        assert np.abs(img.astype(int) - rgb).max() <= tol, (name, img[8, 8])
    # prepared once: a second call reuses it (no new warnings), a changed folder is a new dataset
    caplog.clear()
    again = data.prepare(folder_config(folder, tmp_path / "tfds"))
    assert again.builder_config.name == builder.builder_config.name and "skipping" not in caplog.text
    solid("RGB", (16, 16), (1, 2, 3)).save(folder / "new.png")
    assert data.prepare(folder_config(folder, tmp_path / "tfds")).info.splits["train"].num_examples == 10


def test_crop_to_aspect_then_pad_to_square():
    # a white 40x20 (w x h) image at aspect 0.5 keeps all of it and pads black bands above and below
    out = preprocess.preprocess(solid("RGB", (40, 20), (255, 255, 255)), 16, aspect_ratio=0.5)
    assert out.shape == (16, 16, 3)
    assert (out[:3] <= 2).all() and (out[13:] <= 2).all() and (out[5:11] >= 253).all()
    # aspect 1 crops the centre square: a left-red / right-blue image of 60x20 keeps only the middle (blue|red)
    img = np.zeros((20, 60, 3), np.uint8)
    img[:, :30] = (255, 0, 0)
    img[:, 30:] = (0, 0, 255)
    out = preprocess.preprocess(PIL.Image.fromarray(img), 20, aspect_ratio=1.0)
    assert (out[:, :8] == (255, 0, 0)).all() and (out[:, 12:] == (0, 0, 255)).all()
    # a tall image at aspect 0.75: crop to 4:3 landscape-ish height, then pad -> black rows
    out = preprocess.preprocess(solid("RGB", (40, 80), (0, 255, 0)), 16, aspect_ratio=0.75)
    assert (out[0] <= 2).all() and (out[8] == (0, 255, 0)).all()


def test_folder_loader_gives_model_batches(tmp_path):
    folder = tmp_path / "imgs"
    make_folder(folder)
    c = folder_config(folder, tmp_path / "tfds")
    data.prepare(c)
    mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Explicit,))
    batch = next(data.make_loader(c, NamedSharding(mesh, P("data"))))
    assert batch.shape == (8, 16, 16, 3) and float(batch.min()) >= -1 and float(batch.max()) <= 1


def test_folder_errors(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "readme.txt").write_text("no images here")
    with pytest.raises(ValueError, match="data.folder: no images .* found under"):
        data.prepare(folder_config(tmp_path / "empty", tmp_path / "tfds"))
    with pytest.raises(ValueError, match="data.folder: .* is not a directory"):
        data.prepare(folder_config(tmp_path / "missing", tmp_path / "tfds"))
    with pytest.raises(ValueError, match="data.folder: must name an image folder"):
        data.prepare(folder_config("", tmp_path / "tfds"))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.png").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="none of the 1 image files"):
        data.prepare(folder_config(tmp_path / "bad", tmp_path / "tfds"))
    c = folder_config(tmp_path / "empty", tmp_path / "tfds", aspect=0.0)
    with pytest.raises(ValueError, match="data.aspect_ratio"):
        data.prepare(c)


class GanjaxTestCatalog(tfds.core.GeneratorBasedBuilder):
    """A stand-in catalog dataset (wide 40x30 images, labels) that prepares without TensorFlow."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "label": tfds.features.ClassLabel(num_classes=3),
            "image": tfds.features.Image(shape=(30, 40, 3), encoding_format="png")}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(24), "test": self._generate_examples(6)}

    def _generate_examples(self, n):
        for i in range(n):
            img = PIL.Image.new("RGB", (40, 30), (10 * i, 255 - 10 * i, 128))
            buf = io.BytesIO()
            img.save(buf, "png")
            yield i, {"label": i % 3, "image": buf.getvalue()}


class GanjaxTestNeedsTf(GanjaxTestCatalog):
    """Yields numpy images, which TFDS encodes with TensorFlow: like many catalog datasets."""

    def _generate_examples(self, n):
        for i in range(n):
            yield i, {"label": 0, "image": np.zeros((30, 40, 3), np.uint8)}


def catalog_config(name, data_dir, split="train"):
    c = base_config()
    c.model.resolution, c.train.batch_size = 16, 8
    c.data.dataset, c.data.data_dir, c.data.split, c.data.aspect_ratio = name, str(data_dir), split, 0.75
    return c


def test_catalog_dataset_is_prepared_and_resized(tmp_path):
    c = catalog_config("ganjax_test_catalog", tmp_path, split="test")
    builder = data.prepare(c)
    source = builder.as_data_source(split="train")  # the derived copy holds the configured split
    assert len(source) == 6
    colours = sorted(tuple(source[i]["image"][8, 8]) for i in range(6))
    assert colours == sorted((10 * i, 255 - 10 * i, 128) for i in range(6))
    img = source[0]["image"]
    assert img.shape == (16, 16, 3) and (img[0] <= 2).all() and (img[-1] <= 2).all()  # 3:4 crop padded
    assert os.path.isdir(tmp_path / "ganjax_test_catalog")  # the source itself lives in the user's data dir
    mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Explicit,))
    assert next(data.make_loader(c, NamedSharding(mesh, P("data")))).shape == (8, 16, 16, 3)


def test_catalog_class_labels_are_kept_for_conditional_training(tmp_path):
    c = catalog_config("ganjax_test_catalog", tmp_path)
    c.data.label, c.model.num_classes, c.train.batch_size = "label", 3, 24
    data.prepare(c)
    mesh = jax.make_mesh((1,), ("data",), axis_types=(AxisType.Explicit,), devices=jax.devices()[:1])
    rows, labels = data.make_loader(c, NamedSharding(mesh, P("data")), process_index=0, process_count=1).next_local()
    # image i has colour (10 i, 255 - 10 i, 128) and label i % 3 (the stand-in's generator)
    np.testing.assert_array_equal(labels, np.round(rows[:, 8, 8, 0] / 10).astype(int) % 3)
    np.testing.assert_array_equal(data.class_counts(c), [8, 8, 8])
    c.data.label = "image"
    with pytest.raises(ValueError, match="'image' is not a class label of 'ganjax_test_catalog'.*: label"):
        data.builder_and_split(c)


@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is not None, reason="TensorFlow is installed")
def test_catalog_dataset_that_needs_tensorflow_names_the_extra(tmp_path):
    with pytest.raises(RuntimeError, match=r"needs TensorFlow.*pip install 'ganjax\[tf\]'"):
        data.prepare(catalog_config("ganjax_test_needs_tf", tmp_path))
