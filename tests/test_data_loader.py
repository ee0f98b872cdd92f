"""The Grain loader: per-process shards that tile each epoch, exact resume, globally sharded batches."""

import json

import jax
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from ganjax import data
from ganjax.config import base_config

N = 192  # train images; 12 global batches of 16 per epoch


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("tfds"))
    data.prepare(make_config(d))
    return d


def make_config(data_dir, batch=16, mirror=False, seed=0, workers=0):
    c = base_config()
    c.model.resolution = 16
    c.data.dataset, c.data.num_images, c.data.data_dir = "shapes", N, data_dir
    c.data.mirror, c.data.shuffle_seed, c.data.worker_count = mirror, seed, workers
    c.train.batch_size = batch
    return c


def sharding(n=8, axes=("data",), spec=P("data")):
    mesh = jax.make_mesh((n,) if len(axes) == 1 else n, axes, axis_types=(AxisType.Explicit,) * len(axes),
                         devices=jax.devices()[:int(np.prod(n))])
    return NamedSharding(mesh, spec)


def keys(rows):
    return [r.tobytes() for r in rows]


def test_two_process_shards_are_disjoint_and_tile_each_epoch(data_dir):
    c = make_config(data_dir)
    hosts = [data.make_loader(c, sharding(), process_index=i, process_count=2) for i in range(2)]
    single = data.make_loader(c, sharding(), process_index=0, process_count=1)
    source = data.builder_and_split(c)[0].as_data_source(split="train")
    all_images = keys(source[i]["image"] for i in range(N))
    assert len(set(all_images)) == N
    steps_per_epoch = N // c.train.batch_size
    epochs = []
    for _ in range(2):
        seen = [[], []]
        for _ in range(steps_per_epoch):
            parts = [h.next_local() for h in hosts]
            assert all(p.shape == (8, 16, 16, 3) and p.dtype == np.uint8 for p in parts)
            for i in range(2):
                seen[i] += keys(parts[i])
            # the global batch is the same whatever the number of processes
            assert keys(np.concatenate(parts)) == keys(single.next_local())
        assert not set(seen[0]) & set(seen[1])  # disjoint
        assert sorted(seen[0] + seen[1]) == sorted(all_images)  # together: every image exactly once
        epochs.append(seen[0] + seen[1])
    assert epochs[0] != epochs[1]  # reshuffled each epoch
    assert hosts[0].get_state()["step"] == 2 * steps_per_epoch


def test_test_split(data_dir):
    c = make_config(data_dir)
    c.data.split = "test"
    loader = data.make_loader(c, sharding(), process_index=0, process_count=1)
    assert loader.num_examples == N // 10 and loader.dataset.endswith(":test")
    assert loader.next_local().shape == (16, 16, 16, 3)


def test_shuffle_seed_changes_the_order(data_dir):
    a = data.make_loader(make_config(data_dir, seed=0), sharding(), process_index=0, process_count=1)
    b = data.make_loader(make_config(data_dir, seed=1), sharding(), process_index=0, process_count=1)
    assert keys(a.next_local()) != keys(b.next_local())


@pytest.mark.parametrize("mirror", [False, True])
def test_restored_state_continues_with_the_exact_next_batches(data_dir, mirror):
    c = make_config(data_dir, mirror=mirror)
    run = data.make_loader(c, sharding(), process_index=0, process_count=1)
    for _ in range(5):
        run.next_local()
    state = json.loads(json.dumps(run.get_state()))  # what the checkpoint stores
    expected = [run.next_local() for _ in range(9)]  # crosses the epoch boundary at step 12
    resumed = data.make_loader(c, sharding(), process_index=0, process_count=1)
    resumed.set_state(state)
    for want in expected:
        np.testing.assert_array_equal(resumed.next_local(), want)
    # the same state also resumes a run on another process count: host i gives rows i of each batch
    hosts = [data.make_loader(c, sharding(), process_index=i, process_count=2) for i in range(2)]
    for h in hosts:
        h.set_state(state)
    for want in expected[:3]:
        np.testing.assert_array_equal(np.concatenate([h.next_local() for h in hosts]), want)


def test_mirror_flips_about_half_the_images(data_dir):
    plain = data.make_loader(make_config(data_dir), sharding(), process_index=0, process_count=1)
    mirrored = data.make_loader(make_config(data_dir, mirror=True), sharding(), process_index=0, process_count=1)
    flipped = same = 0
    for _ in range(6):
        for a, b in zip(plain.next_local(), mirrored.next_local()):
            if np.array_equal(a, b):
                same += 1
            else:
                np.testing.assert_array_equal(a[:, ::-1], b)
                flipped += 1
    assert 25 < flipped < 71 and flipped + same == 96, flipped


def test_global_batch_is_sharded_float_in_range(data_dir):
    c = make_config(data_dir)
    sh = sharding()
    loader = data.make_loader(c, sh)
    reference = data.make_loader(c, sh, process_index=0, process_count=1)
    for _ in range(2):
        batch = next(loader)
        rows = reference.next_local()
        assert batch.shape == (16, 16, 16, 3) and batch.dtype == np.float32
        assert batch.sharding == sh
        assert [s.data.shape[0] for s in batch.addressable_shards] == [2] * 8
        np.testing.assert_allclose(np.asarray(batch), rows.astype(np.float32) / 127.5 - 1.0, atol=2e-7, rtol=0)
        np.testing.assert_array_equal(np.rint((np.asarray(batch) + 1.0) * 127.5).astype(np.uint8), rows)
    assert float(batch.min()) >= -1.0 and float(batch.max()) <= 1.0
    assert loader.get_state() == reference.get_state()


def test_batch_split_over_two_mesh_axes(data_dir):
    # data x fsdp both split the batch; a model axis replicates it
    sh = sharding((2, 2, 2), ("data", "fsdp", "model"), P(("data", "fsdp")))
    batch = next(data.make_loader(make_config(data_dir, batch=8), sh))
    assert batch.sharding == sh and [s.data.shape[0] for s in batch.addressable_shards] == [2] * 8


def test_bad_input_errors_name_the_field(data_dir, tmp_path):
    with pytest.raises(ValueError, match=r"train.batch_size: 12 is not divisible by the 8 data shards"):
        data.make_loader(make_config(data_dir, batch=12), sharding())
    with pytest.raises(ValueError, match=r"train.batch_size: 16 is not divisible by the 3 processes"):
        data.make_loader(make_config(data_dir), sharding(), process_index=0, process_count=3)
    c = make_config(data_dir)
    c.model.resolution = 24
    with pytest.raises(ValueError, match="model.resolution"):
        data.prepare(c)
    c = make_config(data_dir)
    c.data.dataset = "cifar1O"
    with pytest.raises(ValueError, match=r"data.dataset: unknown dataset 'cifar1O'.*'shapes', 'folder'.*cifar10"):
        data.prepare(c)
    c = make_config(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="is not prepared.*ganjax data prepare"):
        data.make_loader(c, sharding())
    c = make_config(data_dir)
    c.data.split = "validation"
    with pytest.raises(ValueError, match="data.split"):
        data.make_loader(c, sharding())
    for field, value in (("prefetch", -1), ("worker_count", -2), ("aspect_ratio", 0.0)):
        c = make_config(data_dir)
        c.data[field] = value
        with pytest.raises(ValueError, match=f"data.{field}"):
            data.make_loader(c, sharding())
    run = data.make_loader(make_config(data_dir), sharding(), process_index=0, process_count=1)
    other = data.make_loader(make_config(data_dir, seed=3), sharding(), process_index=0, process_count=1)
    with pytest.raises(ValueError, match="shuffle_seed.*data.shuffle_seed"):
        other.set_state(run.get_state())
    with pytest.raises(RuntimeError, match="simulated"):
        next(data.make_loader(make_config(data_dir), sharding(), process_index=1, process_count=2))


@pytest.mark.parametrize("prefetch", [0, 1, 4])
def test_prefetch_depth_does_not_change_the_batches(data_dir, prefetch):
    c = make_config(data_dir, mirror=True)
    base = data.make_loader(c, sharding(), process_index=0, process_count=1)
    c.data.prefetch = prefetch
    loader = data.make_loader(c, sharding(), process_index=0, process_count=1)
    for _ in range(14):
        np.testing.assert_array_equal(loader.next_local(), base.next_local())
    assert 0.0 < loader.wait_seconds  # time blocked in next(), for the data-wait share of a step


def test_max_images_trains_on_the_first_n_images_only(data_dir):
    c = make_config(data_dir)
    c.data.max_images = 40
    loader = data.make_loader(c, sharding(), process_index=0, process_count=1)
    assert loader.num_examples == 40
    source = data.builder_and_split(c)[0].as_data_source(split="train")
    first = set(keys(source[i]["image"] for i in range(40)))
    seen = set()
    for _ in range(10):  # 160 images: 4 epochs of the subset
        seen |= set(keys(loader.next_local()))
    loader.close()
    assert seen == first
