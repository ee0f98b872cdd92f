"""Pictures (ganjax/viz.py) and GANsformer's insight outputs (ganjax/insight.py) on a tiny generator:
exact uint8 round trip, attention overlays (one colour per latent, every pixel covered), per-latent
variation, truncation sweeps, interpolation GIFs."""

import jax
import jax.numpy as jnp
import numpy as np
import PIL.Image
import pytest
from flax import linen as nn

from ganjax import insight, viz
from ganjax.config import base_config
from ganjax.models import ModelConfig, build_models
from rounding import assert_equal_to_rounding
from seed_reference import reference_images


def test_uint8_to_unit_range_and_back_is_exact():
    levels = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=-1)
    as_float = levels.astype(np.float32) / 127.5 - 1.0  # what the data loader feeds the models
    np.testing.assert_array_equal(viz.to_uint8(as_float), levels)
    # the loader's device-side op (reciprocal multiply, clamped at 1) round-trips too
    on_device = np.asarray(jnp.minimum(jnp.asarray(levels, jnp.float32) / 127.5 - 1.0, 1.0))
    np.testing.assert_array_equal(viz.to_uint8(on_device), levels)
    np.testing.assert_array_equal(viz.to_uint8(levels), levels)  # uint8 passes through


def test_palette_colours_are_distinct():
    for t in (1, 2, 8, 16, 32, 100):
        palette = viz.latent_palette(t)
        assert palette.shape == (t, 3) and palette.dtype == np.uint8
        assert len({tuple(c) for c in palette}) == t


def test_segmentation_paints_the_argmax_latent_of_the_head_mean():
    rng = np.random.default_rng(0)
    b, t, layers, heads, r = 2, 5, 3, 2, 8
    attn = rng.random((b, t, layers, heads, r, r))
    seg = viz.attention_segmentation(attn)
    assert seg.shape == (b, layers, r, r, 3)
    owners = attn.mean(axis=3).argmax(axis=1)
    np.testing.assert_array_equal(seg, viz.latent_palette(t)[owners])
    # head 1 alone decides where head 0 is flat
    attn[:, :, :, 0] = 0.5
    np.testing.assert_array_equal(viz.attention_owners(attn), attn[:, :, :, 1].argmax(axis=1))


def test_overlays_blend_and_upsample_smaller_maps():
    rng = np.random.default_rng(1)
    images = rng.uniform(-1, 1, (2, 8, 8, 3)).astype(np.float32)
    attn = rng.random((2, 4, 2, 1, 4, 4))  # maps at half the image size
    out = viz.attention_overlays(images, attn, alpha=0.25)
    assert out.shape == (2, 3, 8, 8, 3)
    np.testing.assert_array_equal(out[:, 0], viz.to_uint8(images))
    seg = np.repeat(np.repeat(viz.attention_segmentation(attn), 2, axis=2), 2, axis=3)
    want = np.rint(0.75 * viz.to_uint8(images)[:, None].astype(np.float32) + 0.25 * seg)
    np.testing.assert_array_equal(out[:, 1:], want.astype(np.uint8))
    grid = viz.attention_overlay_grid(images, attn, alpha=0.25)
    assert grid.shape == (2 * 8, 3 * 8, 3)
    np.testing.assert_array_equal(grid[8:16, 16:24], out[1, 2])
    with pytest.raises(ValueError, match="no attention"):
        viz.attention_overlays(images, np.zeros((2, 4, 0, 1, 8, 8)))


def test_gif_has_the_requested_frames_and_size(tmp_path):
    frames = np.stack([np.full((6, 10, 3), v, np.float32) for v in np.linspace(-1, 1, 7)])
    path = tmp_path / "anim" / "x.gif"
    viz.save_gif(frames, str(path), fps=10)
    with PIL.Image.open(path) as gif:
        assert gif.n_frames == 7 and gif.size == (10, 6) and gif.info["loop"] == 0
        assert gif.info["duration"] == 100


# ------------------------------------------------------------------------------------------ tiny generator

B = 2  # one batch shape for every insight call: one compile per (attention or not)


@pytest.fixture(scope="module")
def tiny_g():
    c = base_config()
    m = c.model
    m.resolution, m.channel_base, m.channel_max = 16, 256, 16
    m.num_local, m.z_dim, m.w_dim = 3, 8, 8
    m.mapping_layers, m.attention_end_res = 1, 16
    m.global_modulation = True
    G, _ = build_models(ModelConfig.from_config(m))
    keys = {n: jax.random.key(i) for i, n in enumerate(("params", "noise", "dropout", "mixing"))}
    z = jnp.zeros((1, m.num_local + 1, m.z_dim))
    variables = nn.meta.unbox(G.init(keys, z))
    # a non-zero w_avg, so truncation has something to pull towards
    w_avg = jax.random.normal(jax.random.key(7), (m.w_dim,))
    variables["buffers"]["mapping_network"]["w_avg"] = w_avg
    return G, variables, c


def test_attention_overlays_of_a_generator_cover_every_pixel_with_latent_colours(tiny_g):
    G, variables, config = tiny_g
    images, attn = insight.attention(G, variables, [0, 1, 2], batch_size=B)
    layers = len(G.cfg.attention_layers)
    assert images.shape == (3, 16, 16, 3) and attn.shape == (3, 3, layers, 1, 16, 16)
    np.testing.assert_allclose(attn.sum(axis=1), 1.0, atol=1e-5)  # softmax over the latents at each position
    seg = viz.attention_segmentation(attn)
    palette = {tuple(c) for c in viz.latent_palette(3)}
    colours = {tuple(c) for c in seg.reshape(-1, 3)}
    assert colours <= palette  # every pixel of every layer is painted in a latent's colour
    owners = viz.attention_owners(attn)
    assert owners.shape == (3, layers, 16, 16) and owners.min() >= 0 and owners.max() < 3
    # the images are `ganjax sample`'s images of the same seeds
    assert_equal_to_rounding(images, reference_images(G, variables, [0, 1, 2]))
    grid = viz.attention_overlay_grid(images, attn)
    assert grid.shape == (3 * 16, (1 + layers) * 16, 3)


def test_variation_latents_replace_exactly_one_component():
    z = jax.random.normal(jax.random.key(0), (4, 5))
    table = np.asarray(insight.variation_latents(z, seed=3, num_variations=2))
    assert table.shape == (4, 3, 4, 5)
    for i in range(4):
        np.testing.assert_array_equal(table[i, 0], z)
        for j in (1, 2):
            changed = np.any(table[i, j] != np.asarray(z), axis=-1)
            assert changed.tolist() == [c == i for c in range(4)]
        assert np.any(table[i, 1, i] != table[i, 2, i])


def test_latent_variation_rows(tiny_g):
    G, variables, config = tiny_g
    table = insight.latent_variation(G, variables, seed=5, num_variations=2, batch_size=B)
    k = G.cfg.num_latents
    assert table.shape == (k, 3, 16, 16, 3)
    base = reference_images(G, variables, [5])[0]
    for i in range(k):
        # the base column is the same latents and noise at another batch position: the same image to rounding
        assert_equal_to_rounding(table[i, 0], table[0, 0])
        for j in (1, 2):
            assert np.abs(table[i, j] - table[i, 0]).max() > 1e-3  # each resampled component changes the image
    assert_equal_to_rounding(table[0, 0], base)
    assert viz.table_grid(table).shape == (k * 16, 3 * 16, 3)


def test_truncation_sweep_psi0_is_the_w_avg_image(tiny_g):
    G, variables, config = tiny_g
    psis = [0.0, 0.5, 1.0]
    table = insight.truncation_sweep(G, variables, [0, 1], psis, batch_size=B)
    assert table.shape == (2, 3, 16, 16, 3)
    m = G.cfg
    w_avg = variables["buffers"]["mapping_network"]["w_avg"]
    ws = jnp.broadcast_to(w_avg, (1, m.num_latents, m.num_ws, m.w_dim))
    w_avg_image = np.asarray(G.apply(variables, ws, noise_mode="const", method="synthesis"))[0]
    for row in table:
        assert_equal_to_rounding(row[0], w_avg_image)
    assert np.abs(table[0, 2] - table[1, 2]).max() > 1e-3
    assert_equal_to_rounding(table[:, 2], reference_images(G, variables, [0, 1]))
    assert_equal_to_rounding(table[:, 1], reference_images(G, variables, [0, 1], 0.5))


@pytest.mark.parametrize("method", ["slerp", "lerp"])
def test_interpolation_runs_from_the_first_seed_to_the_last(tiny_g, method, tmp_path):
    G, variables, config = tiny_g
    frames = insight.interpolation(G, variables, [3, 4, 9], num_frames=7, method=method, batch_size=B)
    assert frames.shape == (7, 16, 16, 3)
    ends = reference_images(G, variables, [3, 4, 9])
    np.testing.assert_allclose(frames[0], ends[0], atol=1e-4)
    np.testing.assert_allclose(frames[3], ends[1], atol=1e-4)  # frame 3 of 7 sits on the middle seed
    np.testing.assert_allclose(frames[-1], ends[2], atol=1e-4)
    assert np.abs(frames[1] - frames[0]).max() > 1e-4
    viz.save_gif(frames, str(tmp_path / "i.gif"))
    with PIL.Image.open(tmp_path / "i.gif") as gif:
        assert gif.n_frames == 7 and gif.size == (16, 16)


def test_slerp_keeps_the_norm_between_orthogonal_vectors():
    a, b = jnp.array([[1.0, 0.0]]), jnp.array([[0.0, 2.0]])
    mid = insight.slerp(a, b, jnp.array([0.5]))
    np.testing.assert_allclose(mid, [[np.sqrt(0.5), np.sqrt(2.0)]], atol=1e-6)
    np.testing.assert_allclose(insight.slerp(a, a, jnp.array([0.3])), a, atol=1e-6)  # parallel: lerp


@pytest.mark.slow  # a subprocess compiling three generator programs
def test_sample_command_writes_every_insight_output(tmp_path):
    import os
    import subprocess
    import sys

    from ganjax.checkpoint import Checkpointer
    from test_export import fake_train_state, init_generator, tiny_config

    config = tiny_config()
    G, variables = init_generator(config)
    mesh, state = fake_train_state(variables, 0.0)
    ck = Checkpointer(str(tmp_path / "run"), config, mesh)
    assert ck.maybe_save(1, state, force=True)
    ck.close()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "ganjax", "sample", "--checkpoint", str(tmp_path / "run"), "--seeds", "0-2",
         "--attention", str(out / "a.png"), "--variation", str(out / "v.png"), "--variations", "2",
         "--truncation", str(out / "t.png"), "--truncation_psis", "0,0.5,1", "--interpolation", str(out / "i.gif"),
         "--frames", "5", "--scale", "2"],
        cwd=root, env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    layers = len(G.cfg.attention_layers)
    k = G.cfg.num_latents
    sizes = {name: PIL.Image.open(out / name).size for name in ("a.png", "v.png", "t.png")}
    s = 2 * 16  # --scale 2
    assert sizes == {"a.png": ((1 + layers) * s, 3 * s), "v.png": (3 * s, k * s), "t.png": (3 * s, 3 * s)}
    with PIL.Image.open(out / "i.gif") as gif:
        assert gif.n_frames == 5 and gif.size == (s, s)
    # the PNG is the overlay grid of the checkpoint's G_ema, each pixel a 2x2 block (one level of slack for
    # float differences)
    grid = np.asarray(PIL.Image.open(out / "a.png").convert("RGB")).astype(int)
    images, attn = insight.attention(G, variables, [0, 1, 2])
    assert np.abs(grid - viz.upscale(viz.attention_overlay_grid(images, attn), 2)).max() <= 1


def test_upscale_repeats_each_pixel_as_a_block():
    image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    big = viz.upscale(image, 3)
    assert big.shape == (6, 9, 3)
    np.testing.assert_array_equal(big[3:6, 6:9], np.broadcast_to(image[1, 2], (3, 3, 3)))
    np.testing.assert_array_equal(viz.upscale(np.stack([image, image]), 2)[1], viz.upscale(image, 2))  # frames
    assert viz.upscale(image, 1) is image
    for bad in (0, 1.5):
        with pytest.raises(ValueError, match="scale must be a positive integer"):
            viz.upscale(image, bad)


def test_attention_snapshot_reads_back_from_tensorboard(tiny_g, tmp_path):
    import io

    from tensorboard.backend.event_processing import event_accumulator

    from ganjax.train.summary import MetricWriter

    G, variables, _ = tiny_g
    mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,), devices=jax.devices()[:1])
    z = jax.random.normal(jax.random.key(0), (2, G.cfg.num_latents, G.cfg.z_dim))
    grid = insight.AttentionSnapshot(G, mesh, z)(variables["params"], variables["buffers"])
    layers = len(G.cfg.attention_layers)
    assert grid.shape == (2 * 16, (1 + layers) * 16, 3) and grid.dtype == np.uint8
    writer = MetricWriter(str(tmp_path))
    writer.image(7, "samples/attention", grid)
    writer.close()
    acc = event_accumulator.EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0})
    acc.Reload()
    (event,) = acc.Images("samples/attention")
    assert event.step == 7 and (event.width, event.height) == (grid.shape[1], grid.shape[0])
    np.testing.assert_array_equal(np.asarray(PIL.Image.open(io.BytesIO(event.encoded_image_string))), grid)
