"""From generated images (or their features) and a reference FeatureStats to the metric values.

METRICS is the one list of metrics: a name of `config.eval.metrics` -> a function (reference FeatureStats,
generated features [M, 2048], options) -> {record key: float}. The config check, `ganjax eval --metrics` and
the evaluators read it; a new metric is one function and one entry.
"""

from ganjax.metrics import extract, fid, improved_precision_recall, kid


def _fid(reference, features, options):
    mu, sigma = fid.feature_moments(features)
    return {"fid": fid.frechet_distance(mu, sigma, reference.mu, reference.sigma)}


def _kid(reference, features, options):
    return {"kid": kid.kernel_inception_distance(reference.features, features, options["kid_subsets"],
                                                 options["kid_subset_size"])}


def _pr(reference, features, options):
    precision, recall = improved_precision_recall.precision_recall(reference.features, features, options["pr_k"])
    return {"precision": precision, "recall": recall}


METRICS = {"fid": _fid, "kid": _kid, "pr": _pr}


def parse_metrics(metrics):
    """"fid,kid" or ("fid", "kid") -> a validated tuple (config.eval.metrics is a comma list)."""
    names = tuple(m.strip() for m in metrics.split(",") if m.strip()) if isinstance(metrics, str) else tuple(metrics)
    unknown = [m for m in names if m not in METRICS]
    if unknown or not names:
        raise ValueError(f"eval.metrics: unknown metric(s) {unknown or names}; choose from {tuple(METRICS)}")
    return names


def metrics_from_features(reference, features, metrics=("fid",), pr_k=3, kid_subsets=100, kid_subset_size=1000):
    """reference: FeatureStats of the reals; features: [M, 2048] of generated images -> {"fid", "kid",
    "precision", "recall"} (those asked for), floats."""
    options = dict(pr_k=pr_k, kid_subsets=kid_subsets, kid_subset_size=kid_subset_size)
    out = {}
    for name in parse_metrics(metrics):
        out.update(METRICS[name](reference, features, options))
    return out


def compute_metrics(batches, num_images, reference, extractor, metrics=("fid",), **kwargs):
    """Features of `num_images` generated images from `batches` (iterable or function step -> batch), scored
    against `reference`; kwargs go to metrics_from_features."""
    features = extract.extract_features(batches, num_images, extractor, progress="generated images")
    return metrics_from_features(reference, features, metrics, **kwargs)
