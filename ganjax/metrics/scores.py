"""From generated images (or their features) and a reference FeatureStats to the metric values."""

from ganjax.metrics import extract, fid, improved_precision_recall, kid

METRICS = ("fid", "kid", "pr")


def parse_metrics(metrics):
    """"fid,kid" or ("fid", "kid") -> a validated tuple (config.eval.metrics is a comma list)."""
    names = tuple(m.strip() for m in metrics.split(",")) if isinstance(metrics, str) else tuple(metrics)
    unknown = [m for m in names if m not in METRICS]
    if unknown or not names:
        raise ValueError(f"eval.metrics: unknown metric(s) {unknown or names}; choose from {METRICS}")
    return names


def metrics_from_features(reference, features, metrics=("fid",), pr_k=3, kid_subsets=100, kid_subset_size=1000):
    """reference: FeatureStats of the reals; features: [M, 2048] of generated images -> {"fid", "kid",
    "precision", "recall"} (those asked for), floats."""
    out = {}
    for name in parse_metrics(metrics):
        if name == "fid":
            mu, sigma = fid.feature_moments(features)
            out["fid"] = fid.frechet_distance(mu, sigma, reference.mu, reference.sigma)
        elif name == "kid":
            out["kid"] = kid.kernel_inception_distance(reference.features, features, kid_subsets, kid_subset_size)
        else:
            pr = improved_precision_recall.precision_recall(reference.features, features, pr_k)
            out["precision"], out["recall"] = pr
    return out


def compute_metrics(batches, num_images, reference, extractor, metrics=("fid",), **kwargs):
    """Features of `num_images` generated images from `batches` (iterable or function step -> batch), scored
    against `reference`; kwargs go to metrics_from_features."""
    features = extract.extract_features(batches, num_images, extractor, progress="generated images")
    return metrics_from_features(reference, features, metrics, **kwargs)
