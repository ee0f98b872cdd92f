"""The PNG image-grid writer used by `ganjax sample` and the training loop's sample grids."""

import numpy as np
import PIL.Image

from ganjax import viz


def test_to_uint8_maps_range_ends_and_clips():
    x = np.array([-2.0, -1.0, 0.0, 1.0, 2.0], np.float32)
    np.testing.assert_array_equal(viz.to_uint8(x), [0, 0, 128, 255, 255])


def test_grid_layout_and_png_roundtrip(tmp_path):
    n, h, w = 5, 4, 6
    images = np.stack([np.full((h, w, 3), i / 5.0, np.float32) for i in range(n)])
    grid = viz.image_grid(images)  # ceil(sqrt(5)) = 3 columns, 2 rows
    assert grid.shape == (2 * h, 3 * w, 3)
    for i in range(n):
        r, c = divmod(i, 3)
        assert np.all(grid[r * h:(r + 1) * h, c * w:(c + 1) * w] == viz.to_uint8(i / 5.0))
    assert np.all(grid[h:, 2 * w:] == 0)  # the empty cell stays black
    path = tmp_path / "sub" / "grid.png"
    viz.save_image_grid(images, str(path), cols=5)
    np.testing.assert_array_equal(np.asarray(PIL.Image.open(path)), viz.image_grid(images, cols=5))
