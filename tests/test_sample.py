"""`ganjax sample`'s pieces: seed lists, and images that depend on their seed alone (psi, noise modes)."""

import jax
import numpy as np
import pytest

from ganjax.commands.sample import parse_seeds
from ganjax.sampling import generate
from rounding import assert_equal_to_rounding
from seed_reference import reference_images
from test_export import init_generator, tiny_config


def test_parse_seeds():
    assert parse_seeds("1,2,5-9") == [1, 2, 5, 6, 7, 8, 9]
    assert parse_seeds(" 4 , 0-1,") == [4, 0, 1]
    for bad in ("", "a", "3-1", "-2", "1-2-3"):
        with pytest.raises(ValueError, match="--seeds"):
            parse_seeds(bad)


@pytest.fixture(scope="module")
def generator():
    config = tiny_config()
    G, variables = init_generator(config)
    return G, variables, config


def test_image_depends_on_its_seed_alone(generator):
    G, variables, config = generator
    four = generate(G, variables, [0, 1, 2, 3], batch_size=2)
    assert four.shape == (4, 16, 16, 3) and np.isfinite(four).all()
    other = generate(G, variables, [3, 1], batch_size=2)  # other order and batch neighbours
    np.testing.assert_allclose(other, four[[3, 1]], atol=1e-4)
    assert np.abs(four[0] - four[1]).max() > 1e-2  # different seeds, different images
    padded = generate(G, variables, [2, 0, 1], batch_size=2)  # last batch padded, extras dropped
    np.testing.assert_allclose(padded, four[[2, 0, 1]], atol=1e-4)


@pytest.mark.parametrize("psi,noise_mode", [(1.0, "const"), (0.5, "const"), (1.0, "random")])
def test_the_sampler_follows_the_documented_seed_scheme(generator, psi, noise_mode):
    G, variables, _ = generator
    variables = jax.tree_util.tree_map_with_path(  # noise with weight, so the noise key shows in the images
        lambda path, x: x + 0.5 if "noise_strength" in jax.tree_util.keystr(path) else x, variables)
    images = generate(G, variables, [0, 7], psi=psi, noise_mode=noise_mode, batch_size=2)
    assert_equal_to_rounding(images, reference_images(G, variables, [0, 7], psi, noise_mode))


def test_psi_zero_gives_the_average_image(generator):
    G, variables, config = generator
    images = generate(G, variables, [0, 1], psi=0.0, batch_size=2)  # every w = w_avg, const noise
    np.testing.assert_allclose(images[0], images[1], atol=1e-5)


def test_random_noise_follows_the_seed(generator):
    G, variables, config = generator
    # Noise strengths start at 0 (no effect); give them weight so the noise mode shows in the images.
    variables = jax.tree_util.tree_map_with_path(
        lambda path, x: x + 0.5 if "noise_strength" in jax.tree_util.keystr(path) else x, variables)
    const = generate(G, variables, [0, 1], batch_size=2)
    rand = generate(G, variables, [0, 1], noise_mode="random", batch_size=2)
    swapped = generate(G, variables, [1, 0], noise_mode="random", batch_size=2)
    np.testing.assert_allclose(swapped, rand[[1, 0]], atol=1e-4)
    assert np.abs(rand - const).max() > 1e-2
