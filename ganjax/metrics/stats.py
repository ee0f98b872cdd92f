"""Feature statistics of an image set: the features themselves (KID, precision/recall need them) and their
float64 mean/covariance (FID), saved as one .npz so a dataset's reference is computed once."""

import dataclasses
import os
import pathlib

import numpy as np

from ganjax.metrics import fid


@dataclasses.dataclass(frozen=True)
class FeatureStats:
    features: np.ndarray  # [N, D] float32
    mu: np.ndarray  # [D] float64
    sigma: np.ndarray  # [D, D] float64

    @classmethod
    def from_features(cls, features):
        features = np.asarray(features, np.float32)
        mu, sigma = fid.feature_moments(features)
        return cls(features, mu, sigma)

    @property
    def num_images(self):
        return len(self.features)

    def save(self, path):
        pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
        tmp = f"{path}.tmp.npz"  # write then rename: readers never see a half-written file
        np.savez(tmp, features=self.features, mu=self.mu, sigma=self.sigma)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path):
        with np.load(path) as f:
            missing = {"features", "mu", "sigma"} - set(f.files)
            if missing:
                raise ValueError(f"{path}: not a feature-statistics file (missing {sorted(missing)})")
            return cls(f["features"], f["mu"], f["sigma"])
