"""FID / KID / precision-recall against closed forms and brute force; sharded feature extraction and the
reference-statistics cache. No torch and no Inception weights: the extractor tests swap in a cheap stand-in
for the network (tests/test_inception.py proves the network itself)."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from ganjax import config as config_lib
from ganjax import metrics
from ganjax.evaluate import EvaluationAbandoned, _stoppable
from ganjax.metrics import extract, fid, improved_precision_recall, inception, kid


def _random_spd(rng, d):
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


# ---------------------------------------------------------------------------------------------- FID


def test_feature_moments_match_numpy():
    x = np.random.default_rng(0).normal(size=(50, 6)).astype(np.float32)
    mu, sigma = fid.feature_moments(x)
    assert mu.dtype == sigma.dtype == np.float64
    np.testing.assert_allclose(mu, x.astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(x.astype(np.float64), rowvar=False), rtol=1e-12)
    with pytest.raises(ValueError, match="N >= 2"):
        fid.feature_moments(x[:1])


def test_fid_of_a_set_against_itself_is_zero():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 32)) @ rng.normal(size=(32, 32)) + 3.0
    mu, sigma = fid.feature_moments(x)
    assert abs(fid.frechet_distance(mu, sigma, mu, sigma)) < 1e-9 * np.trace(sigma)


def test_fid_closed_form_commuting_covariances():
    """Same eigenvectors: FID = |mu1 - mu2|^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2."""
    rng = np.random.default_rng(2)
    d = 16
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    a, b = rng.uniform(0.1, 3.0, d), rng.uniform(0.1, 3.0, d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = fid.frechet_distance(mu1, q @ np.diag(a) @ q.T, mu2, q @ np.diag(b) @ q.T)
    np.testing.assert_allclose(got, expected, rtol=1e-9)


def test_fid_closed_form_general_covariances():
    """tr((S1 S2)^(1/2)) = sum of sqrt eigenvalues of the symmetric S1^(1/2) S2 S1^(1/2)."""
    rng = np.random.default_rng(3)
    d = 24
    s1, s2 = _random_spd(rng, d), _random_spd(rng, d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    w, v = np.linalg.eigh(s1)
    r = (v * np.sqrt(w)) @ v.T
    tr_covmean = np.sqrt(np.linalg.eigvalsh(r @ s2 @ r)).sum()
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr_covmean
    np.testing.assert_allclose(fid.frechet_distance(mu1, s1, mu2, s2), expected, rtol=1e-9)


def test_fid_of_gaussian_feature_sets_approaches_closed_form():
    """Features drawn from two known Gaussians: the FID of the samples converges to the population value."""
    rng = np.random.default_rng(4)
    d, n = 8, 40000
    s1, s2 = _random_spd(rng, d), _random_spd(rng, d)
    mu1, mu2 = np.zeros(d), np.full(d, 0.5)
    x1 = rng.multivariate_normal(mu1, s1, n)
    x2 = rng.multivariate_normal(mu2, s2, n)
    population = fid.frechet_distance(mu1, s1, mu2, s2)
    sampled = fid.frechet_distance(*fid.feature_moments(x1), *fid.feature_moments(x2))
    assert population > 1.0
    np.testing.assert_allclose(sampled, population, rtol=0.02)


def test_fid_retries_non_finite_sqrtm_with_eps(monkeypatch):
    rng = np.random.default_rng(5)
    d = 10
    s1, s2 = _random_spd(rng, d), _random_spd(rng, d)
    mu = rng.normal(size=d)
    calls = []
    real_sqrtm = scipy.linalg.sqrtm

    def flaky_sqrtm(a):
        calls.append(a)
        return np.full_like(a, np.nan) if len(calls) == 1 else real_sqrtm(a)

    monkeypatch.setattr(fid.scipy.linalg, "sqrtm", flaky_sqrtm)
    got = fid.frechet_distance(mu, s1, mu, s2)
    assert len(calls) == 2
    eps = np.eye(d) * fid.SQRTM_EPS
    np.testing.assert_allclose(calls[1], (s1 + eps) @ (s2 + eps), rtol=1e-15)
    expected = np.trace(s1) + np.trace(s2) - 2 * np.trace(real_sqrtm((s1 + eps) @ (s2 + eps))).real
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_fid_rejects_mismatched_statistics():
    with pytest.raises(ValueError, match="mismatched statistics"):
        fid.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


# ---------------------------------------------------------------------------------------------- KID


def _mmd2_unbiased_loops(x, y):
    """The unbiased MMD^2 estimator with k(a, b) = (a.b / d + 1)^3, written as explicit sums."""
    m, d = len(x), x.shape[1]
    k = lambda a, b: (a @ b / d + 1) ** 3  # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_kid_equals_unbiased_mmd_when_a_subset_is_the_whole_set():
    rng = np.random.default_rng(6)
    real, fake = rng.normal(size=(20, 5)), rng.normal(0.4, 1.0, size=(20, 5))
    # One subset of all 20 images (a permutation of each set): exactly the full-set estimator.
    got = kid.kernel_inception_distance(real, fake, num_subsets=1, max_subset_size=1000)
    np.testing.assert_allclose(got, _mmd2_unbiased_loops(fake, real), rtol=1e-10)
    # Several subsets of 8: the mean of the per-subset estimators, reproducible by seed.
    a = kid.kernel_inception_distance(real, fake, num_subsets=7, max_subset_size=8, seed=3)
    sub = np.random.default_rng(3)
    per_subset = [
        _mmd2_unbiased_loops(fake[sub.choice(20, 8, replace=False)], real[sub.choice(20, 8, replace=False)])
        for _ in range(7)
    ]
    np.testing.assert_allclose(a, np.mean(per_subset), rtol=1e-10)


def test_kid_of_identical_sets_is_zero_up_to_its_1_over_m_term():
    """For identical sets the unbiased estimator is (2/m)(mean off-diagonal k - mean diagonal k): O(1/m), tiny
    next to the KID of a shifted set."""
    rng = np.random.default_rng(7)
    x = np.abs(rng.normal(size=(300, 64)))
    got = kid.kernel_inception_distance(x, x, num_subsets=3)
    k = (x @ x.T / 64 + 1) ** 3
    m = len(x)
    off = (k.sum() - np.trace(k)) / (m * (m - 1))
    np.testing.assert_allclose(got, 2 / m * (off - np.trace(k) / m), rtol=1e-9)
    shifted = kid.kernel_inception_distance(x, x + 0.3, num_subsets=3)
    assert abs(got) < 0.02 * shifted


# ---------------------------------------------------------------------------------- precision / recall


def _coverage_brute_force(manifold, probes, k):
    d_mm = np.linalg.norm(manifold[:, None] - manifold[None], axis=-1)
    radii = np.sort(d_mm, axis=1)[:, k]  # column 0 is the point itself
    d_pm = np.linalg.norm(probes[:, None] - manifold[None], axis=-1)
    return float(np.mean(np.any(d_pm <= radii[None], axis=1)))


def test_precision_recall_of_identical_sets_is_one():
    x = np.random.default_rng(8).normal(size=(200, 32)).astype(np.float32)
    assert improved_precision_recall.precision_recall(x, x, k=3) == (1.0, 1.0)


@pytest.mark.parametrize("k", [1, 3])
def test_precision_recall_equals_brute_force(k, monkeypatch):
    monkeypatch.setattr(improved_precision_recall, "_ROW_BLOCK", 16)  # several blocks, a ragged last one
    rng = np.random.default_rng(9)
    real = rng.normal(size=(70, 4)).astype(np.float32)
    fake = rng.normal(0.7, 1.3, size=(45, 4)).astype(np.float32)
    precision, recall = improved_precision_recall.precision_recall(real, fake, k=k)
    assert precision == pytest.approx(_coverage_brute_force(real, fake, k), abs=1e-12)
    assert recall == pytest.approx(_coverage_brute_force(fake, real, k), abs=1e-12)
    assert 0.0 < precision < 1.0 and 0.0 < recall < 1.0  # the sets partly overlap: not a trivial answer


def test_precision_recall_of_disjoint_sets_is_zero():
    x = np.random.default_rng(10).normal(size=(50, 8)).astype(np.float32)
    assert improved_precision_recall.precision_recall(x, x + 100.0) == (0.0, 0.0)


# --------------------------------------------------------------------------- extraction and the API

D_STANDIN = 12


def _standin_features(params, images, protocol=None):
    """Cheap stand-in for the Inception network with the same input handling: [N, H, W, 3] -> [N, 12]."""
    x = inception.to_levels(images) / 127.5 - 1.0
    pooled = jnp.concatenate([x.mean(axis=(1, 2)), x.std(axis=(1, 2)), x[:, 0, 0], x[:, -1, -1]], axis=-1)
    return pooled * params["scale"]


@pytest.fixture
def extractor(monkeypatch):
    monkeypatch.setattr(inception, "features", _standin_features)
    return metrics.FeatureExtractor({"scale": jnp.float32(2.0)})


def _images(n, seed=0, size=8):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _expected(images):
    return np.asarray(_standin_features({"scale": 2.0}, jnp.asarray(images)))


def test_extractor_pads_odd_batches_over_all_devices(extractor):
    assert extractor.mesh.size == jax.device_count() == 8
    images = _images(5)
    feats = extractor(images)
    assert feats.shape == (5, D_STANDIN)
    np.testing.assert_allclose(feats, _expected(images), rtol=1e-5, atol=1e-6)


def test_extractor_takes_global_arrays_of_another_mesh(extractor):
    """A generator's output sharded over a training mesh's batch axes (not all axes) is resharded."""
    mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=(AxisType.Auto,) * 2)
    images = _images(8, seed=1).astype(np.float32) / 127.5 - 1.0
    batch = jax.device_put(images, NamedSharding(mesh, PartitionSpec("data")))
    np.testing.assert_allclose(extractor(batch), _expected(images), rtol=1e-5, atol=1e-6)
    # An array on one device is spread over the mesh first.
    one_device = jax.device_put(images, jax.devices()[3])
    np.testing.assert_allclose(extractor(one_device), _expected(images), rtol=1e-5, atol=1e-6)
    # A global array whose size does not divide the devices takes the padded path.
    np.testing.assert_allclose(extractor(jnp.asarray(images[:3])), _expected(images[:3]), rtol=1e-5, atol=1e-6)


def test_extract_features_from_a_batch_function_stops_at_num_images(extractor):
    images = _images(12, seed=2)
    calls = []

    def gen(step):
        calls.append(step)
        return images[3 * step : 3 * step + 3]

    feats = metrics.extract_features(gen, 7, extractor)
    assert calls == [0, 1, 2]  # no batch generated beyond the 7 images needed
    np.testing.assert_allclose(feats, _expected(images[:7]), rtol=1e-5, atol=1e-6)


def test_extract_features_from_iterables(extractor):
    images = _images(10, seed=3)
    batches = [images[:4], images[4:8], images[8:]]
    everything = metrics.extract_features(batches, None, extractor)
    np.testing.assert_allclose(everything, _expected(images), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="ended after 10 of the 11 images"):
        metrics.extract_features(batches, 11, extractor)
    with pytest.raises(ValueError, match="finite iterable"):
        metrics.extract_features(lambda i: images, None, extractor)


def test_compute_metrics_of_the_reals_themselves(extractor, tmp_path):
    images = _images(64, seed=4)
    batches = [images[i : i + 16] for i in range(0, 64, 16)]
    ref = metrics.dataset_reference_stats(batches, 64, extractor, str(tmp_path / "ref.npz"))
    scores = metrics.compute_metrics(iter(batches), 64, ref, extractor, metrics="fid,kid,pr", kid_subsets=5)
    assert set(scores) == {"fid", "kid", "precision", "recall"}
    assert abs(scores["fid"]) < 1e-6
    assert scores["precision"] == scores["recall"] == 1.0
    shifted = metrics.compute_metrics(
        [np.clip(b.astype(int) + 60, 0, 255).astype(np.uint8) for b in batches], 64, ref, extractor, ("fid", "kid")
    )
    assert shifted["fid"] > 1.0 and shifted["kid"] > 5 * abs(scores["kid"])
    with pytest.raises(ValueError, match="eval.metrics: unknown metric"):
        metrics.compute_metrics(batches, 64, ref, extractor, metrics="fid,is")


def test_reference_stats_are_cached(extractor, tmp_path):
    images = _images(20, seed=5)
    path = str(tmp_path / "stats" / "ref.npz")
    first = metrics.dataset_reference_stats([images[:10], images[10:]], 20, extractor, path)

    def must_not_run(step):
        raise AssertionError("the cached statistics should have been used")

    second = metrics.dataset_reference_stats(must_not_run, 20, extractor, path)
    np.testing.assert_array_equal(second.features, first.features)
    np.testing.assert_array_equal(second.sigma, first.sigma)
    np.testing.assert_allclose(first.mu, _expected(images).astype(np.float64).mean(0), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="holds 20 images, expected 30"):
        metrics.dataset_reference_stats(must_not_run, 30, extractor, path)


def test_reference_cache_path_keys_on_what_changes_the_images(tmp_path):
    c = config_lib.base_config()
    c.data.data_dir = str(tmp_path)
    base = metrics.reference_cache_path(c, 1000)
    assert base.startswith(str(tmp_path / "ganjax_fid_stats")) and base.endswith(".npz")
    assert "shapes-train-32px-1000-" in base
    assert metrics.reference_cache_path(c, 2000) != base
    assert metrics.reference_cache_path(c, None) != base
    c2 = config_lib.base_config()
    c2.data.data_dir = str(tmp_path)
    c2.model.resolution = 64
    assert metrics.reference_cache_path(c2, 1000) != base
    c2.model.resolution = 32
    c2.data.aspect_ratio = 0.75
    assert metrics.reference_cache_path(c2, 1000) != base
    assert metrics.reference_cache_path(c, 1000, cache_dir="/elsewhere").startswith("/elsewhere/ganjax_fid_stats/")


def test_a_stop_request_abandons_feature_extraction_between_batches():
    """What a preemption notice does to an evaluation (ganjax.evaluate._stoppable): the batch function stops
    being called once stop() is true, and EvaluationAbandoned replaces the scores."""
    calls = []

    def batch(index):
        calls.append(index)
        return np.full((4, 2), float(index))

    noticed = lambda: len(calls) >= 2  # noqa: E731 - SIGTERM arrives while batch 1 is being scored
    with pytest.raises(EvaluationAbandoned, match="before batch 2"):
        extract.extract_features(_stoppable(batch, noticed), 100, lambda b: b)
    assert calls == [0, 1]
    assert len(extract.extract_features(_stoppable(batch, lambda: False), 10, lambda b: b)) == 10


def test_a_smaller_reference_reads_the_first_images_of_a_larger_cached_one(extractor, tmp_path, capsys):
    """The reference reals are the first N of one fixed order, so the statistics of 12 are the first 12
    features of a cached 20-image reference (or of the whole split's); nothing is extracted again."""
    c = config_lib.base_config()
    c.data.data_dir = str(tmp_path)
    images = _images(20, seed=6)
    assert metrics.larger_cached_reference(c, 12) is None
    full = metrics.dataset_reference_stats([images[:10], images[10:]], 20, extractor,
                                           metrics.reference_cache_path(c, 20))
    other = config_lib.base_config()
    other.data.data_dir, other.model.resolution = str(tmp_path), 64  # other reals: never a superset
    metrics.dataset_reference_stats([images], 20, extractor, metrics.reference_cache_path(other, 30))
    larger = metrics.larger_cached_reference(c, 12)
    assert larger == metrics.reference_cache_path(c, 20)
    assert metrics.larger_cached_reference(c, 20) is None  # not larger
    capsys.readouterr()

    def must_not_run(step):
        raise AssertionError("the larger cached reference should have been used")

    part = metrics.dataset_reference_stats(must_not_run, 12, extractor, metrics.reference_cache_path(c, 12), larger)
    assert "the first 12 of the 20 reals cached in" in capsys.readouterr().out
    np.testing.assert_array_equal(part.features, full.features[:12])
    direct = metrics.FeatureStats.from_features(extractor(images[:12]))  # one batch of 12, not 10 + 10
    # The stand-in's features are |x| <= 2 from 64-term float32 reductions, which XLA may order differently by
    # batch size and ISA: up to 64 roundings of 2 * 2^-24 each.
    np.testing.assert_allclose(part.mu, direct.mu, rtol=0, atol=64 * 2 * 2.0**-24)
    metrics.dataset_reference_stats([images], 20, extractor, metrics.reference_cache_path(c, None))
    assert metrics.larger_cached_reference(c, 12) == metrics.reference_cache_path(c, 20)  # the smallest larger one
    os.remove(metrics.reference_cache_path(c, 20))
    assert metrics.larger_cached_reference(c, 12) == metrics.reference_cache_path(c, None)  # the whole split's


def test_a_long_extraction_reports_its_progress(extractor, monkeypatch, capsys):
    images = _images(20, seed=7)
    extract.extract_features([images[:8], images[8:16], images[16:]], 20, extractor)
    assert capsys.readouterr().out == ""  # quiet unless asked (and unless it takes PROGRESS_SECONDS)
    monkeypatch.setattr(extract, "PROGRESS_SECONDS", 0.0)
    extract.extract_features([images[:8], images[8:16], images[16:]], 20, extractor, progress="generated images")
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" (")[0] for line in lines] == [f"generated images: {n}/20 images" for n in (8, 16, 20)]
    assert lines[-1].endswith(", ~0 s left)")
