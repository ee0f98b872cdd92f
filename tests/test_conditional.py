"""Class-conditional training: labels from the datasets, G's label embedding and D's projection, the step's
labels under sharding and micro-batching, sampling by class, and the errors for bad label settings."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn
import PIL.Image
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from ganjax import data, sampling
from ganjax.config import ConfigError, base_config, validate
from ganjax.data import labels as labels_lib
from ganjax.data import scenes
from ganjax.evaluate import image_generator
from ganjax.models import ModelConfig, build_models
from ganjax.models import flops

from test_train_step import deterministic, run_steps, tiny_config

N = 96  # shapes train images


def tiny_model(num_classes=5, **kw):
    fields = dict(resolution=16, channel_base=256, channel_max=16, num_local=2, z_dim=8, w_dim=8, mapping_layers=1,
                  attention_end_res=8, num_classes=num_classes)
    return ModelConfig(**{**fields, **kw}).validate()


STYLEGAN2 = dict(num_local=0, attention="none", mapping_attention=False, mapping_resnet=False)


def init(cfg, batch=4):
    G, D = build_models(cfg)
    z = jax.random.normal(jax.random.key(0), (batch, cfg.num_latents, cfg.z_dim))
    labels = jnp.arange(batch, dtype=jnp.int32) % cfg.num_classes
    gv = G.init({"params": jax.random.key(1), "noise": jax.random.key(2)}, z, labels=labels)
    img = jax.random.uniform(jax.random.key(3), (batch, 16, 16, 3), minval=-1, maxval=1)
    dv = D.init({"params": jax.random.key(4)}, img, labels=labels)
    return G, D, gv, dv, z, img, labels


FAMILIES = {"gansformer": {}, "stylegan2": STYLEGAN2,
            # CLEVR style: the global latent reaches no synthesis layer, so the label must reach the local ones
            "gansformer-clevr": dict(global_modulation=False, mapping_attention=False)}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_a_label_changes_g_and_d_and_the_layer_walk_counts_its_params(family):
    cfg = tiny_model(**FAMILIES[family])
    G, D, gv, dv, z, img, labels = init(cfg)
    other = (labels + 1) % cfg.num_classes
    a = G.apply(gv, z, labels=labels, noise_mode="const")
    b = G.apply(gv, z, labels=other, noise_mode="const")
    scale = float(jnp.max(jnp.abs(a)))
    assert float(jnp.min(jnp.max(jnp.abs(a - b), axis=(1, 2, 3)))) > 1e-3 * scale  # every image changes
    # the same label gives the same image, whatever the batch's other labels
    np.testing.assert_allclose(G.apply(gv, z[:1], labels=labels[:1], noise_mode="const")[0], a[0],
                               rtol=0, atol=1e-5 * scale)
    la, lb = D.apply(dv, img, labels=labels), D.apply(dv, img, labels=other)
    assert la.shape == (4,) and np.all(np.abs(np.asarray(la - lb)) > 1e-6 * float(jnp.max(jnp.abs(la))))
    # the label embedding gets a gradient through the images (a 16-kimg run once left it at its init)
    grad = jax.grad(lambda p: jnp.sum(G.apply({**gv, "params": p}, z, labels=labels, noise_mode="const") ** 2))(
        gv["params"])["mapping_network"]["embed"]["fc"]["weight"]
    assert float(jnp.max(jnp.abs(nn.meta.unbox(grad)))) > 0
    n_params = sum(x.size for x in jax.tree.leaves(gv["params"])) + sum(x.size for x in jax.tree.leaves(dv["params"]))
    assert n_params == flops.param_count(flops.generator_layers(cfg)) + flops.param_count(flops.discriminator_layers(cfg))


def test_d_projection_is_linear_in_the_class_embedding():
    """D's logit of image i with class c is f(x_i) . m(c) / sqrt(dim): over all (image, class) pairs the logit
    matrix has rank <= dim and, for one image, a class's logit is the dot product with that class's row."""
    cfg = tiny_model(num_classes=3)
    G, D, gv, dv, z, img, labels = init(cfg, batch=3)
    table = np.stack([np.asarray(D.apply(dv, img, labels=jnp.full((3,), c, jnp.int32))) for c in range(3)], 1)
    # D's own output for mixed labels is the matching entry of the table (labels act per sample)
    mixed = np.asarray(D.apply(dv, img, labels=jnp.array([2, 0, 1], jnp.int32)))
    np.testing.assert_allclose(mixed, table[np.arange(3), [2, 0, 1]], rtol=1e-5, atol=1e-6)


def test_unconditional_and_conditional_models_refuse_the_wrong_inputs():
    cfg = tiny_model()
    G, D, gv, dv, z, img, labels = init(cfg)
    with pytest.raises(ValueError, match="needs labels"):
        G.apply(gv, z, noise_mode="const")
    with pytest.raises(ValueError, match="needs labels"):
        D.apply(dv, img)
    G0, _ = build_models(tiny_model(num_classes=0))
    with pytest.raises(ValueError, match="unconditional"):
        G0.init({"params": jax.random.key(0), "noise": jax.random.key(0)}, z, labels=labels)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


def shapes_config(data_dir, label="front_color", batch=16):
    c = base_config()
    c.model.resolution = 16
    c.data.dataset, c.data.num_images, c.data.data_dir = "shapes", N, data_dir
    c.data.label, c.model.num_classes = label, labels_lib.SHAPES_LABELS[label][0]
    c.train.batch_size = batch
    return c


def sharding(n=8):
    mesh = jax.make_mesh((n,), ("data",), axis_types=(AxisType.Explicit,), devices=jax.devices()[:n])
    return NamedSharding(mesh, P("data"))


@pytest.mark.parametrize("label", list(labels_lib.SHAPES_LABELS))
def test_shapes_labels_are_the_rendered_scenes_metadata(data_dir, label):
    """The loader's (image, label) pairs: each image's label is what the scene renderer says about it."""
    c = shapes_config(data_dir, label)
    data.prepare(c)
    images, meta = scenes.render(0, "train", np.arange(N), 16)
    by_image = {img.tobytes(): i for i, img in enumerate(images)}
    expected = {"num_objects": meta["num_objects"] - 2, "front_shape": meta["shape"][:, -1],
                "front_color": meta["color"][:, -1]}[label]
    loader = data.make_loader(c, sharding(), process_index=0, process_count=1)
    rows, labels = loader.next_local()
    assert labels.dtype == np.int32 and labels.shape == (16,)
    np.testing.assert_array_equal(labels, [expected[by_image[r.tobytes()]] for r in rows])
    np.testing.assert_array_equal(data.class_counts(c), np.bincount(expected, minlength=c.model.num_classes))


def test_every_process_gets_the_labels_of_its_rows(data_dir):
    c = shapes_config(data_dir)
    data.prepare(c)
    single = data.make_loader(c, sharding(), process_index=0, process_count=1)
    hosts = [data.make_loader(c, sharding(), process_index=i, process_count=4) for i in range(4)]
    for _ in range(3):
        whole_rows, whole_labels = single.next_local()
        parts = [h.next_local() for h in hosts]
        np.testing.assert_array_equal(np.concatenate([p[0] for p in parts]), whole_rows)
        np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), whole_labels)
    images, labels = next(data.make_loader(c, sharding()))  # the global arrays: labels sharded as the rows
    assert labels.shape == (16,) and labels.sharding.spec == P("data") and images.shape[0] == 16


def write_folder(root, layout):
    for rel, colour in layout.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        PIL.Image.new("RGB", (20, 20), colour).save(path)


def test_folder_labels_from_subfolders_and_from_a_labels_file(tmp_path):
    root = str(tmp_path / "imgs")
    write_folder(root, {"cat/a.png": (255, 0, 0), "cat/b.png": (250, 0, 0), "dog/c.png": (0, 0, 255),
                        "dog/sub/d.png": (0, 0, 250)})
    c = base_config()
    c.model.resolution, c.train.batch_size = 16, 4
    c.data.dataset, c.data.folder, c.data.data_dir = "folder", root, str(tmp_path / "tfds")
    c.data.label, c.model.num_classes = "subfolders", 2
    data.prepare(c)
    rows, labels = data.make_loader(c, sharding(4), process_index=0, process_count=1).next_local()
    red = rows[:, 8, 8, 0] > 128  # cat images are red, dog images blue
    np.testing.assert_array_equal(labels, np.where(red, 0, 1))
    np.testing.assert_array_equal(data.class_counts(c), [2, 2])

    # a flat folder with StyleGAN2-ADA's dataset.json
    flat = str(tmp_path / "flat")
    write_folder(flat, {"x.png": (255, 0, 0), "y.png": (0, 0, 255), "z.png": (0, 0, 250)})
    with open(os.path.join(flat, "dataset.json"), "w") as f:
        json.dump({"labels": [["x.png", 2], ["y.png", 0], ["z.png", 0]]}, f)
    c.data.folder, c.data.label, c.model.num_classes, c.train.batch_size = flat, "dataset.json", 3, 3
    data.prepare(c)
    rows, labels = data.make_loader(c, sharding(1), process_index=0, process_count=1).next_local()
    np.testing.assert_array_equal(labels, np.where(rows[:, 8, 8, 0] > 128, 2, 0))

    # errors name the problem: loose images, a missing label, a class count that does not match
    with pytest.raises(ValueError, match="top level"):
        c.data.folder, c.data.label = flat, "subfolders"
        data.builder_and_split(c)
    with open(os.path.join(flat, "dataset.json"), "w") as f:
        json.dump({"labels": [["x.png", 1]]}, f)
    c.data.label = "dataset.json"
    with pytest.raises(ValueError, match="no label for 2 image"):
        data.builder_and_split(c)
    c.data.folder, c.data.label, c.model.num_classes, c.train.batch_size = root, "subfolders", 3, 4
    with pytest.raises(ValueError, match="model.num_classes: 3, but the label 'subfolders'.* has 2 classes"):
        data.make_loader(c, sharding(4))


def test_bad_label_settings_are_config_errors_naming_the_field():
    c = base_config()
    c.model.num_classes = 4
    with pytest.raises(ConfigError, match=r"config.data.label: model.num_classes=4"):
        validate(c)
    c.model.num_classes, c.data.label = 0, "front_shape"
    with pytest.raises(ConfigError, match=r"config.model.num_classes: data.label='front_shape'"):
        validate(c)
    c.model.num_classes = 5
    with pytest.raises(ConfigError, match=r"config.model.num_classes: 5, but the shapes label 'front_shape' has 4"):
        validate(c)
    c.data.label = "colour"
    with pytest.raises(ConfigError, match=r"config.data.label: 'colour' is not a label of the shapes dataset"):
        validate(c)
    c.model.num_classes = -1
    with pytest.raises(ConfigError, match="model.num_classes"):
        validate(c)


def test_sampling_by_class_is_deterministic_and_batch_independent():
    cfg = tiny_model(num_classes=3)
    G, _, gv, _, _, _, _ = init(cfg)
    a = sampling.generate(G, gv, [0, 1, 2], labels=2, batch_size=3)
    b = sampling.generate(G, gv, [2], labels=[2], batch_size=1)
    scale = float(np.max(np.abs(a)))
    np.testing.assert_allclose(b[0], a[2], rtol=0, atol=1e-5 * scale)  # float32 rounding across batch sizes
    np.testing.assert_array_equal(sampling.generate(G, gv, [0, 1, 2], labels=2, batch_size=3), a)
    c = sampling.generate(G, gv, [0, 1, 2], labels=[0, 1, 2], batch_size=3)
    assert np.max(np.abs(c[0] - a[0])) > 1e-3 * scale
    with pytest.raises(ValueError, match="conditional"):
        sampling.generate(G, gv, [0])
    with pytest.raises(ValueError, match="outside"):
        sampling.generate(G, gv, [0], labels=3)


def test_evaluation_draws_classes_from_the_data_frequencies():
    cfg = tiny_model(num_classes=3)
    G, _, gv, _, _, _, _ = init(cfg)
    keys = sampling.image_keys(0, jnp.arange(3000))
    freq = np.array([0.6, 0.3, 0.1])
    drawn = np.bincount(np.asarray(jax.vmap(lambda k: sampling.class_of(k, jnp.log(freq)))(keys)), minlength=3)
    # binomial standard deviation sqrt(n p (1-p)) <= 27 images: 5 sigma
    np.testing.assert_allclose(drawn, 3000 * freq, atol=5 * 27)
    mesh = jax.make_mesh((1,), ("b",), axis_types=(AxisType.Auto,), devices=jax.devices()[:1])
    with np.errstate(divide="ignore"):
        one_hot = np.log([0.0, 1.0, 0.0])
    gen = image_generator(G, 4, NamedSharding(mesh, P("b")))
    images = gen(gv["params"], gv["buffers"], 0, 0, one_hot)
    # every image is class 1's: the same latents and noise with class 1 give the same images
    z = jnp.stack([sampling.latents(k, cfg.num_latents, cfg.z_dim) for k in sampling.image_keys(0, jnp.arange(4))])
    ref = jax.vmap(lambda z, k: G.apply(gv, z[None], noise_mode="random", labels=jnp.ones((1,), jnp.int32),
                                        rngs={"noise": sampling.noise_key(k)})[0])(z, sampling.image_keys(0, jnp.arange(4)))
    np.testing.assert_allclose(images, ref, rtol=0, atol=1e-5 * float(np.max(np.abs(ref))))


def test_conditional_relativistic_step_matches_across_strategies_and_micro_batches():
    """The same 2 steps of a conditional GAN with the relativistic loss and R1 + R2 every step on 1 device, on 8
    devices (shard_map; data x fsdp x tensor parallel, 2x2x2) and with 2 micro-batches: G's fakes and D's reals
    see the same labels, and fake i meets real i, row by row everywhere."""
    def conditional(*layout, **train):  # R3GAN's loss: relativistic pairs, R1 and R2 every step
        c = tiny_config(*layout, **deterministic(r1_interval=1, loss="relativistic", r2_gamma=0.5, r2_interval=1,
                                                 **train))
        c.model.num_classes, c.data.label = 4, "front_shape"
        return c

    _, ref, ref_metrics, _ = run_steps(conditional("dp"), jax.devices()[:1], 2)
    for name, c, devices in [("shard_map", conditional("shard_map", -1, 1, 1), jax.devices()),
                             ("fsdp_tp", conditional("fsdp_tp", 2, 2, 2), jax.devices()),
                             ("dp+accum", conditional("dp", -1, 1, 1, grad_accum=2), jax.devices())]:
        _, state, metrics, _ = run_steps(c, devices, 2)
        for a, b in zip(ref_metrics, metrics):
            for k in a:
                np.testing.assert_allclose(b[k], a[k], rtol=1e-5, atol=1e-7, err_msg=f"{name} {k}")
        for x, y in zip(jax.tree.leaves((ref.g_params, ref.d_params)), jax.tree.leaves((state.g_params, state.d_params))):
            np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=1e-4, atol=1e-5, err_msg=name)


def test_per_class_fid_compares_each_class_with_its_own_reals(data_dir, tmp_path, monkeypatch):
    """fid/class<c>: the reals of class c among the reference's first N (read independently here from the
    TFDS source in the loader's order) against N_c fakes of class c, with a stand-in feature network."""
    from ganjax import evaluate, metrics
    from ganjax.metrics import fid, inception
    from test_eval import _standin_features

    monkeypatch.setattr(inception, "features", _standin_features)
    monkeypatch.setattr(evaluate, "load_inception_params", lambda path: {"scale": jnp.float32(2.0)})
    c = shapes_config(data_dir, "front_shape")
    c.model.update(dict(channel_base=256, channel_max=16, num_local=2, z_dim=8, w_dim=8, mapping_layers=1,
                        attention_end_res=8))
    c.eval.num_images, c.eval.batch_size = 48, 16
    data.prepare(c)
    cfg = ModelConfig.from_config(c.model).validate()
    G, _, gv, _, _, _, _ = init(cfg)
    mesh = metrics.default_mesh()
    ev = evaluate.Evaluator(c, mesh, cache_dir=str(tmp_path), per_class=True)
    scores = ev(G, gv["params"], gv["buffers"])
    assert set(scores) == {"fid", "fid/class_mean", *(f"fid/class{k}" for k in range(4))}

    # the first 48 reals in the loader's (shuffled, un-mirrored) order and their classes
    loader = data.make_loader(c.copy_and_resolve_references(), sharding(1), process_index=0, process_count=1)
    rows, labels = zip(*(loader.next_local() for _ in range(3)))
    rows, labels = np.concatenate(rows), np.concatenate(labels)
    feats = lambda x: np.asarray(_standin_features({"scale": jnp.float32(2.0)}, jnp.asarray(x, jnp.float32) / 127.5 - 1))
    for k in range(4):
        real = feats(rows[labels == k])
        gen = evaluate.image_generator(G, 16, NamedSharding(mesh, P(tuple(mesh.axis_names))))
        logits = np.where(np.arange(4) == k, 0.0, -np.inf).astype(np.float32)
        fakes = np.concatenate([np.asarray(gen(gv["params"], gv["buffers"], 0, i, logits)) for i in range(4)])
        fake = feats((np.clip(fakes, -1, 1) * 127.5 + 127.5).round())[: len(real)]
        mu_r, s_r = fid.feature_moments(real)
        mu_f, s_f = fid.feature_moments(fake)
        expected = fid.frechet_distance(mu_f, s_f, mu_r, s_r)
        np.testing.assert_allclose(scores[f"fid/class{k}"], expected, rtol=2e-3)
