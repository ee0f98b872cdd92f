"""The field's GAN metrics on the FID Inception (TF 2015-12-05 weights, ported to JAX; no torch here).

    params = load_inception(config.eval.inception_path or None)      # .npz from `ganjax convert inception`
    extractor = FeatureExtractor(params, mesh, fid_protocol(config))  # compile once, reuse every evaluation
    ref = dataset_reference_stats(real_batches, n, extractor, reference_cache_path(config, n))
    scores = compute_metrics(fake_batches, n, ref, extractor, metrics=("fid", "kid", "pr"))
    # -> {"fid": ..., "kid": ..., "precision": ..., "recall": ...}

Batches are global jax.Arrays or each process's numpy part, uint8 or float in [-1, 1], any resolution;
`fake_batches` may be a function step -> batch (e.g. a jitted generator call).
"""

from ganjax.metrics.extract import FeatureExtractor, default_mesh, extract_features
from ganjax.metrics.fid import feature_moments, frechet_distance
from ganjax.metrics.inception import features as inception_features
from ganjax.metrics.kid import kernel_inception_distance
from ganjax.metrics.improved_precision_recall import precision_recall
from ganjax.metrics.reference import (dataset_reference_stats, exists_everywhere, fid_protocol, larger_cached_reference,
                                      reference_cache_path)
from ganjax.metrics.scores import METRICS, compute_metrics, metrics_from_features
from ganjax.metrics.stats import FeatureStats
from ganjax.metrics.weights import default_path as default_inception_path
from ganjax.metrics.weights import load as load_inception

__all__ = [
    "METRICS",
    "FeatureExtractor",
    "FeatureStats",
    "compute_metrics",
    "dataset_reference_stats",
    "exists_everywhere",
    "default_inception_path",
    "default_mesh",
    "extract_features",
    "feature_moments",
    "frechet_distance",
    "inception_features",
    "kernel_inception_distance",
    "load_inception",
    "metrics_from_features",
    "precision_recall",
    "larger_cached_reference",
    "reference_cache_path",
    "fid_protocol",
]
