"""The embedded procedural dataset: deterministic from its seed, varied over the configured ranges."""

import glob
import hashlib

import numpy as np
import pytest

from ganjax.data import scenes, tfds_shapes


def test_render_is_a_function_of_seed_split_and_index():
    images, meta = scenes.render(7, "train", range(40), 32)
    again, meta_again = scenes.render(7, "train", range(40), 32)
    assert images.shape == (40, 32, 32, 3) and images.dtype == np.uint8
    assert images.tobytes() == again.tobytes()
    for key in meta:
        np.testing.assert_array_equal(meta[key], meta_again[key])
    # an image does not depend on the batch it is rendered in
    part, _ = scenes.render(7, "train", [33, 5, 17], 32)
    np.testing.assert_array_equal(part, images[[33, 5, 17]])
    # another seed or split gives other scenes
    other_seed, _ = scenes.render(8, "train", range(40), 32)
    other_split, _ = scenes.render(7, "test", range(40), 32)
    assert all((other_seed[i] != images[i]).any() and (other_split[i] != images[i]).any() for i in range(40))


def test_scenes_cover_the_configured_ranges():
    n = 1000
    images, meta = scenes.render(0, "train", range(n), 16)
    counts = np.bincount(meta["num_objects"], minlength=9)
    assert counts[:2].sum() == 0 and counts[2:].sum() == n  # 2..8 objects
    assert (counts[2:] / n > 0.10).all() and (counts[2:] / n < 0.19).all(), counts  # ~1/7 each
    valid = meta["color"] >= 0
    assert (valid.sum(1) == meta["num_objects"]).all()
    total = valid.sum()
    for key, names in (("color", scenes.COLORS), ("shape", scenes.SHAPES), ("size", scenes.SIZES),
                       ("material", scenes.MATERIALS)):
        freq = np.bincount(meta[key][valid], minlength=len(names)) / total
        assert len(freq) == len(names) and np.allclose(freq, 1 / len(names), atol=0.3 / len(names)), (key, freq)
    assert len({img.tobytes() for img in images}) == n  # no two scenes alike
    # the objects are visible: every image has strongly saturated pixels (the floor is near gray) unless all
    # its objects are gray
    saturation = images.max(-1).astype(int) - images.min(-1)
    colourful = (meta["color"] > 0).any(1)
    assert (saturation.reshape(n, -1).max(1)[colourful] > 40).all()
    assert (saturation.reshape(n, -1).max(1)[~colourful] < 25).all()


def test_object_range_is_configurable_and_checked():
    _, meta = scenes.render(0, "train", range(200), 16, scenes.SceneSpec(min_objects=3, max_objects=4))
    assert set(meta["num_objects"]) == {3, 4} and meta["color"].shape == (200, 4)
    with pytest.raises(ValueError, match="min_objects"):
        scenes.render(0, "train", range(2), 16, scenes.SceneSpec(min_objects=5, max_objects=4))


def test_prepared_dataset_is_byte_identical_and_matches_the_renderer(tmp_path):
    digests = []
    for d in ("a", "b"):
        builder = tfds_shapes.make_builder(tfds_shapes.ShapesConfig.make(16, 60), str(tmp_path / d))
        builder.download_and_prepare()
        files = sorted(glob.glob(str(tmp_path / d / "ganjax_shapes/*/*/*.array_record*")))
        assert len(files) == 2  # train and test
        digests.append([hashlib.sha256(open(f, "rb").read()).hexdigest() for f in files])
    assert digests[0] == digests[1]
    assert builder.info.splits["train"].num_examples == 60 and builder.info.splits["test"].num_examples == 6
    source = builder.as_data_source(split="train")
    rendered, meta = scenes.render(0, "train", range(60), 16)
    stored = {source[i]["image"].tobytes(): source[i] for i in range(len(source))}
    assert set(stored) == {img.tobytes() for img in rendered}  # lossless, every image once
    first = stored[rendered[0].tobytes()]
    assert first["num_objects"] == meta["num_objects"][0]
    np.testing.assert_array_equal(first["color"], meta["color"][0])


def test_bad_shapes_config_is_an_error():
    with pytest.raises(ValueError, match="model.resolution"):
        tfds_shapes.ShapesConfig.make(resolution=48)
    with pytest.raises(ValueError, match="model.resolution"):
        tfds_shapes.ShapesConfig.make(resolution=512)
    with pytest.raises(ValueError, match="data.num_images"):
        tfds_shapes.ShapesConfig.make(resolution=32, num_images=0)


def test_object_windows_lose_nothing(monkeypatch):
    windowed, _ = scenes.render(3, "train", range(300), 32)
    monkeypatch.setattr(scenes, "_WINDOW_RADII", 1000.0)  # every window is the whole image
    full, _ = scenes.render(3, "train", range(300), 32)
    np.testing.assert_array_equal(windowed, full)
