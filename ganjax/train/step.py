"""The training iteration as pure jitted functions of (state, batch).

One iteration runs the recipe's phases in order (ganjax/train/recipe.py: G main, G path length, D main,
D R1, D R2 as configured), each its own optimizer update of its network (a regulariser every iteration
shares its network's main update: recipe.optimizer_steps), then the EMA of G. Lazy phases run every
N iterations with their loss multiplied by N (lazy regularisation). Which lazy phases fire is decided on the
host from the step count; each combination is a separately compiled function (see `TrainStep`), so no step
pays for a regulariser it does not run.

Strategies: `dp`, `fsdp`, `fsdp_tp` are one global program whose state shardings come from the logical
axis rules (XLA inserts the collectives); `shard_map` is a per-device data-parallel program that averages
gradients with an explicit lax.pmean, like pmap/DDP.

Randomness: the iteration key is split into one stream per phase (recipe.phase_keys); z for every phase is
drawn for the global batch, so any sharding sees the same latents. Inside the models (noise, dropout, style
mixing) each device of a shard_map program and each micro-batch folds its index into the key, so their
draws are independent.
"""

import dataclasses
import math
import threading
import time
from typing import Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec

from ganjax.augment.adaptive import AugmentConfig
from ganjax.config import shard_map_problems
from ganjax.models.synthesis import NOISE_MODES
from ganjax.parallel.distributed import barrier
from ganjax.parallel.mesh import batch_axes
from ganjax.parallel.rules import for_compute
from ganjax.train import losses
from ganjax.train.ramps import Ramps
from ganjax.train.recipe import Phase, lazy_ratio, optimizer_steps, phase_keys, recipe, stream, variant_name
from ganjax.train.state import TrainState

@dataclasses.dataclass(frozen=True)
class StepConfig:
    """The train-config values the step depends on (static under jit), with the recipe's phases."""

    batch_size: int
    loss: str
    style_mixing_prob: float
    noise_mode: str
    r1_gamma: float
    r2_gamma: float
    pl_weight: float
    pl_decay: float
    pl_batch_shrink: int
    grad_accum: int
    ema_kimg: float
    ema_rampup: float
    phases: tuple[Phase, ...]
    ramps: Ramps
    augment: AugmentConfig
    num_classes: int = 0  # > 0: a conditional model, and the step takes the batch's labels too

    @property
    def conditional(self) -> bool:
        return self.num_classes > 0

    @classmethod
    def from_config(cls, config) -> "StepConfig":
        t = config.train
        if t.loss not in losses.LOSSES:
            raise ValueError(f"train.loss: must be one of {losses.LOSSES}, got {t.loss!r}")
        if t.noise_mode not in NOISE_MODES:
            raise ValueError(f"train.noise_mode: must be one of {NOISE_MODES}, got {t.noise_mode!r}")
        return cls(
            batch_size=int(t.batch_size), loss=t.loss, style_mixing_prob=float(t.style_mixing_prob),
            noise_mode=t.noise_mode, r1_gamma=float(t.r1_gamma), r2_gamma=float(t.r2_gamma),
            pl_weight=float(t.pl_weight),
            pl_decay=float(t.pl_decay), pl_batch_shrink=int(t.pl_batch_shrink), grad_accum=int(t.grad_accum),
            ema_kimg=float(t.ema_kimg), ema_rampup=float(t.ema_rampup), phases=recipe(t),
            ramps=Ramps.from_config(t), augment=AugmentConfig.from_config(config.augment),
            num_classes=int(config.model.num_classes))

    @property
    def running(self) -> tuple[Phase, ...]:
        """The phases that run at some iteration."""
        return tuple(p for p in self.phases if p.rate > 0)

    def interval(self, name: str) -> int:
        return next(p.interval for p in self.phases if p.name == name)

    def fires(self, step: int) -> tuple[str, ...]:
        """The lazy phases that run at iteration `step` (each at steps 0, N, 2N, ...), in recipe order."""
        return tuple(p.name for p in self.running if p.spec.lazy and p.fires(step))

    def variant_weights(self) -> dict[tuple[str, ...], float]:
        """Fraction of loop iterations that run each combination of lazy phases, over one full period."""
        period = math.lcm(*[p.interval for p in self.running if p.spec.lazy], 1)
        counts: dict[tuple[str, ...], int] = {}
        for s in range(period):
            v = self.fires(s)
            counts[v] = counts.get(v, 0) + 1
        return {v: c / period for v, c in sorted(counts.items(), key=lambda vc: (len(vc[0]), vc[0]))}


def _micro_batches(x, n: int):
    """[B, ...] -> [n, B/n, ...] with micro-batch j = rows j, j+n, j+2n, ...: every batch shard holds an
    equal part of every micro-batch, so slicing needs no communication."""
    return jnp.moveaxis(x.reshape(x.shape[0] // n, n, *x.shape[1:]), 1, 0)


def _accumulate(fn, n: int, key, batched):
    """Mean over n micro-batches of fn(key_j, micro_batch_j) -> pytree of floats; `batched` a pytree of
    [B, ...] arrays."""
    if n == 1:
        return fn(key, batched)
    micro = jax.tree.map(lambda b: _micro_batches(b, n), batched)

    def body(total, xs):
        i, mb = xs
        out = fn(jax.random.fold_in(key, i), mb)
        return jax.tree.map(jnp.add, total, out), None

    shapes = jax.eval_shape(fn, key, jax.tree.map(lambda m: m[0], micro))
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    total, _ = jax.lax.scan(body, zeros, (jnp.arange(n), micro))
    return jax.tree.map(lambda t: t / n, total)


def _labels_kw(labels) -> dict:
    """The labels keyword of a conditional model's apply; none at all for an unconditional one."""
    return {} if labels is None else {"labels": labels}


def _all_finite(tree):
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


PARAMS = {"G": "g_params", "D": "d_params"}  # the state field each network's phases update
OPT_STATES = {"G": "g_opt_state", "D": "d_opt_state"}  # and its optimizer state
LIVE = ("g_params", "g_buffers", "d_params", "pl_mean", "augment")  # what phases read and update (recipe.py)
AUGMENT_STREAM = 0x61756700  # folded into a D evaluation's key for its augmentations (its dropout keeps the key)


def live_values(state: TrainState, cfg: StepConfig) -> dict:
    """What phases read: the LIVE state fields, and 'hparams', the ramped hyper-parameters at this iteration
    (ganjax/train/ramps.py; read with Iteration.value)."""
    return {**{k: getattr(state, k) for k in LIVE}, "hparams": cfg.ramps.at(state.step * cfg.batch_size)}


def opt_states_of(state: TrainState) -> dict:
    return {net: getattr(state, field) for net, field in OPT_STATES.items()}


class Iteration:
    """The phases of one iteration for one model pair and one strategy (axis_names is None for the global
    program, the batch mesh axes for the per-device shard_map program; param_shardings, the storage
    shardings of (G params, D params), when the models must use their params gathered over 'fsdp').
    It also holds what phase functions use: the models applied for training, and the strategy's
    collectives and keys."""

    def __init__(self, G, D, g_opt, d_opt, cfg: StepConfig, axis_names=None, param_shardings=None):
        self.G, self.D, self.cfg = G, D, cfg
        self.opt = {"G": g_opt, "D": d_opt}
        self.axis_names = axis_names
        self.param_shardings = None if param_shardings is None else dict(zip(("G", "D"), param_shardings))

    def compute_params(self, params, net: str):
        """G's or D's params as the models use them (see ganjax.parallel.rules.compute_sharding)."""
        return params if self.param_shardings is None else for_compute(params, self.param_shardings[net])

    # -- collectives: identity in the global program, explicit means in the per-device one --
    def mean(self, tree):
        return tree if self.axis_names is None else jax.lax.pmean(tree, self.axis_names)

    def device_key(self, key):
        return key if self.axis_names is None else jax.random.fold_in(key, jax.lax.axis_index(self.axis_names))

    def g_rngs(self, key):
        k_noise, k_drop, k_mix = jax.random.split(key, 3)
        return {"noise": k_noise, "dropout": k_drop, "mixing": k_mix}

    def generate(self, g_params, g_buffers, z, key, update_w_avg, labels=None):
        """G's images of latents z (conditioned on labels [B] for a conditional model), and with update_w_avg
        its new buffers."""
        kwargs = dict(train=True, noise_mode=self.cfg.noise_mode, style_mixing_prob=self.cfg.style_mixing_prob,
                      rngs=self.g_rngs(key), **_labels_kw(labels))
        variables = {"params": self.compute_params(g_params, "G"), "buffers": g_buffers}
        if update_w_avg:
            img, updates = self.G.apply(variables, z, update_w_avg=True, mutable=["buffers"], **kwargs)
            return img, updates["buffers"]
        return self.G.apply(variables, z, **kwargs), None

    def discriminate(self, d_params, img, key, live, labels=None):
        """D's logits of img (given labels [B] for a conditional model), augmented first when augmentation is
        on (every D evaluation: ganjax/augment/)."""
        if self.cfg.augment.on:
            img = self.cfg.augment(img, jax.random.fold_in(key, AUGMENT_STREAM), live["augment"])
        return self.D.apply({"params": self.compute_params(d_params, "D")}, img, train=True, rngs={"dropout": key},
                            **_labels_kw(labels))

    # -- one phase, one update --
    def run_phase(self, phase: Phase, key, batched: dict, live: dict):
        """The phase on (this device's part of) the batch, its gradients averaged over micro-batches and
        devices: (grads, metrics, updates)."""
        grads, metrics, updates = self.mean(_accumulate(lambda k, mb: phase.spec.fn(self, k, mb, live),
                                                        self.cfg.grad_accum, key, batched))
        if self.param_shardings is not None:  # reduce(-scatter) the gradients straight to the params' shards
            grads = jax.lax.with_sharding_constraint(grads, self.param_shardings[phase.spec.net])
        return grads, metrics, updates

    def value(self, name: str, live: dict):
        """A train hyper-parameter at this iteration: its ramped value, else the configured constant."""
        return live["hparams"].get(name, getattr(self.cfg, name))

    def update(self, net: str, params, opt_state, grads, hparams: dict):
        ramped = self.cfg.ramps.optimizer_ramps(net)
        if ramped:  # set this iteration's lr / beta2, lazily scaled like the constants (state.adam_hparams)
            ratio = lazy_ratio(self.cfg.phases, net)
            hp = dict(opt_state.hyperparams)
            for name, arg in ramped.items():
                hp[arg] = hparams[name] * ratio if arg == "learning_rate" else hparams[name] ** ratio
            opt_state = opt_state._replace(hyperparams=hp)
        updates, opt_state = self.opt[net].update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    def optimizer_step(self, phases: tuple[Phase, ...], keys: dict, inputs: dict, live: dict, opt_states: dict):
        """Phases of one network at the same parameters (recipe.optimizer_steps; usually one) and one optimizer
        step on the sum of their gradients: updates `live` and `opt_states` (dicts keyed as live_values /
        opt_states_of) in place; returns ({phase: grads}, metrics). `inputs` holds the batch ('reals') and
        each phase's latents ({'z': {phase: z}}) and, for a conditional model, the batch's 'labels' (every phase
        gets them: G is conditioned on the real batch's labels, a draw from the data's classes), `keys` each
        phase's key."""
        grads, metrics = {}, {}
        for phase in phases:
            batched = {k: inputs["z"][phase.name] if k == "z" else inputs[k] for k in phase.spec.inputs}
            if "labels" in inputs:
                batched["labels"] = inputs["labels"]
            grads[phase.name], m, updates = self.run_phase(phase, keys[phase.name], batched, live)
            live.update(updates)
            metrics.update(m)
        net = phases[0].spec.net
        field = PARAMS[net]
        total = jax.tree.map(lambda *g: sum(g[1:], g[0]), *grads.values())
        live[field], opt_states[net] = self.update(net, live[field], opt_states[net], total, live["hparams"])
        return grads, metrics

    # -- the iteration --
    def __call__(self, state: TrainState, reals, zs: dict, key, firing: tuple[str, ...], labels=None):
        """One iteration on (this device's part of) the batch (and its labels, for a conditional model), with
        the lazy phases in `firing`; returns (new state, metrics).

        state.rng and state.step are advanced by the caller. A non-finite loss or gradient anywhere in
        the iteration discards the whole update (params, buffers, optimizer states, EMA) and counts a skip.
        """
        keys = phase_keys(key)
        live, opt_states = live_values(state, self.cfg), opt_states_of(state)
        metrics = {f"ramp/{name}": v for name, v in live["hparams"].items()}
        if self.cfg.augment.on:
            metrics["augment/p"] = self.cfg.augment.probability(live["augment"])
        for net in PARAMS:  # the lr each Adam runs at where it ramps, as the loop logs the constant ones
            for name, arg in self.cfg.ramps.optimizer_ramps(net).items():
                if arg == "learning_rate":
                    metrics[f"lr/{net.lower()}"] = live["hparams"][name] * lazy_ratio(self.cfg.phases, net)
        finite = []
        running = tuple(p for p in self.cfg.running if not p.spec.lazy or p.name in firing)
        for phases in optimizer_steps(running):
            inputs = {"z": zs, "reals": reals} if labels is None else {"z": zs, "reals": reals, "labels": labels}
            grads, m = self.optimizer_step(phases, keys, inputs, live, opt_states)
            for name, g in grads.items():
                # A phase's gradient is finite iff its norm is: one reduction that the logged norm needs anyway,
                # where a per-leaf isfinite added ~370 reductions and selects to the step program (half its
                # compile and most of its cache load on XLA:CPU: README, The compilation cache). A finite
                # gradient whose squared sum overflows float32 (norm > ~1.8e19) counts as non-finite and skips
                # the iteration, as a diverged step should (the logged norm is inf then too).
                norm = optax.tree.norm(g)
                finite.append(jnp.isfinite(norm))
                metrics[f"grad_norm/{name}"] = norm
            metrics.update(m)

        beta = losses.ema_beta(state.step, self.cfg.batch_size, self.cfg.ema_kimg, self.cfg.ema_rampup)
        g_ema_params = jax.tree.map(lambda p, e: p + (e - p) * beta, live["g_params"], state.g_ema_params)

        augment = self.cfg.augment.adjust(live["augment"], metrics["D/signs_real"], state.step, self.cfg.batch_size)
        ok = _all_finite([metrics[k] for k in metrics if "loss" in k]) & jnp.all(jnp.stack(finite))
        new = state.replace(g_params=live["g_params"], g_buffers=live["g_buffers"], g_ema_params=g_ema_params,
                            g_ema_buffers=live["g_buffers"], d_params=live["d_params"], g_opt_state=opt_states["G"],
                            d_opt_state=opt_states["D"], pl_mean=live["pl_mean"], augment=augment)
        new = jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, state)
        new = new.replace(skips=jnp.where(ok, 0, state.skips + 1))
        metrics.update({"skipped": (~ok).astype(jnp.float32), "consecutive_skips": new.skips,
                        "ema_beta": beta})
        return new, metrics


class _Background:
    """fn() in a thread of its own; result() joins it and returns (fn's value, its seconds) or raises its
    exception. Daemon, so a process that ends with os._exit (a preemption notice during start-up) need not
    join it; every other way out joins it first (TrainStep.finish_ahead)."""

    def __init__(self, fn: Callable):
        self._fn, self._value, self._error, self._seconds = fn, None, None, 0.0
        self._thread = threading.Thread(target=self._run, name="ganjax-compile-ahead", daemon=True)
        self._thread.start()

    def _run(self):
        t0 = time.perf_counter()
        try:
            self._value = self._fn()
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread by result()
            self._error = e
        self._seconds = time.perf_counter() - t0

    def result(self):
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value, self._seconds


@dataclasses.dataclass
class TrainStep:
    """Jitted iteration functions, one per combination of lazy phases, compiled on first use.

    Separate functions rather than one program with lax.cond: a plain step carries no regulariser branch
    (no conditional for XLA to schedule around, no state copies across branches), at the price of one
    more compilation (two programs for the default R1-only setting). On XLA:CPU the one program with a
    lax.cond over R1 ran an order of magnitude slower than the two (docs/measurements.md).

    Each variant is compiled ahead of its first run (or loaded from the persistent compilation cache,
    ganjax/compilation_cache.py), and with several processes they all wait at a barrier of the
    distributed runtime before running it: one process may load it from the cache in a second while
    another compiles for minutes, and the first collective would otherwise time out waiting.
    `compile_ahead` starts the first step's variant in a background thread from abstract arguments, so its
    tracing, lowering and compile (or cache load) overlap the rest of start-up.
    `on_compiled(name, seconds, waited)` is told each compile (or cache load) as its step first runs: how long
    it took and how long the step waited for it. `on_first_run(name, seconds)` is told how long each variant's
    first execution took, measured by waiting for its outputs (once per variant and session, so the pipeline
    loses one step of overlap): on XLA:CPU a program's first run is several times slower than the next ones
    (buffers, thread pools, kernels warming up), which a rate over that window would count as training speed.
    """

    cfg: StepConfig
    build: Callable[[tuple[str, ...]], Callable]
    on_compiled: Callable[[str, float, float], None] | None = None
    on_first_run: Callable[[str, float], None] | None = None
    _cache: dict = dataclasses.field(default_factory=dict)
    _compiled: dict = dataclasses.field(default_factory=dict)
    _ahead: dict = dataclasses.field(default_factory=dict)

    def compile_ahead(self, step: int, args: tuple):
        """Compile the variant that iteration `step` runs, for `args` (ShapeDtypeStructs with the shardings of
        the real arguments), in a background thread; its first call waits for it. XLA compiles and loads
        without holding the GIL, so on a resume this overlaps the checkpoint restore and the first batch."""
        key = self.cfg.fires(step)
        if key not in self._compiled and key not in self._ahead:
            self._ahead[key] = _Background(lambda: self.variant(key).lower(*args).compile())

    def finish_ahead(self):
        """Wait for compiles begun ahead that no step has taken (a run stopping before its first step): a
        thread still inside XLA when the interpreter shuts down aborts the process. Their results are kept."""
        for key in list(self._ahead):
            try:
                self._compiled[key] = self._ahead.pop(key).result()[0]
            except Exception:  # noqa: BLE001 - the run is stopping for another reason, which is the one to report
                pass

    def variant(self, firing: tuple[str, ...]):
        """The jitted iteration with these lazy phases (StepConfig.fires)."""
        key = tuple(firing)
        if key not in self._cache:
            self._cache[key] = self.build(key)
        return self._cache[key]

    def __call__(self, state, reals, step: int, labels=None):
        """Runs iteration number `step` (a host int: which lazy phases run is decided without a sync), on the
        batch `reals` and, for a conditional model, its `labels`."""
        if self.cfg.conditional != (labels is not None):
            raise ValueError(f"train step: a {'conditional' if self.cfg.conditional else 'unconditional'} model "
                             f"(model.num_classes={self.cfg.num_classes}) was given "
                             f"{'no labels' if labels is None else 'labels'}")
        args = (state, reals) if labels is None else (state, reals, labels)
        key = self.cfg.fires(step)
        first = key not in self._compiled
        if first:
            t0 = time.perf_counter()
            ahead = self._ahead.pop(key, None)
            if ahead is not None:
                self._compiled[key], seconds = ahead.result()
            else:
                self._compiled[key] = self.variant(key).lower(*args).compile()
                seconds = time.perf_counter() - t0
            barrier(f"ganjax.train_step.{variant_name(key)}")
            if self.on_compiled is not None:
                self.on_compiled(variant_name(key), seconds, time.perf_counter() - t0)
        if not (first and self.on_first_run is not None):
            return self._compiled[key](*args)
        jax.block_until_ready(args)  # the steps still in flight: their time, not this first run's
        t0 = time.perf_counter()
        out = jax.block_until_ready(self._compiled[key](*args))
        self.on_first_run(variant_name(key), time.perf_counter() - t0)
        return out


def gathered_param_shardings(config, state_shardings):
    """(G, D) storage shardings of the params for strategies whose models use their params gathered over
    'fsdp' (ganjax.parallel.rules.compute_sharding), else None.

    fsdp: ZeRO-3. Each layer's weights are all-gathered for the forward and backward passes and the
    gradients reduce-scattered back to the shards. Left to itself, XLA's sharding propagation instead
    partitioned some layers' activations over the channels held by 'fsdp' (all-reduce-scatters and
    all-to-alls of activations in G's forward pass, compiled for a v5e-4), which costs activation-sized
    traffic per layer where the gather costs weight-sized traffic, and activations are far larger at
    training batches (a 256^2 x 128 map is 32 MiB per image, its 3x3 conv 0.6 MiB).
    fsdp_tp: the same gather over 'fsdp' (kept split over 'model'), which also works around an XLA
    partitioner bug that permutes batch rows in dots mixing the two axes."""
    if config.parallel.strategy in ("fsdp", "fsdp_tp"):
        return state_shardings.g_params, state_shardings.d_params
    return None


def make_train_step(config, mesh, G, D, g_opt, d_opt, state_shardings) -> TrainStep:
    """The train step for config.parallel.strategy on `mesh`; the state must be laid out as
    `state_shardings` (donated), the batch as ganjax.parallel.batch_sharding(mesh)."""
    cfg = StepConfig.from_config(config)
    strategy = config.parallel.strategy
    baxes = batch_axes(mesh)
    bspec = PartitionSpec(baxes)
    batch_sharding = NamedSharding(mesh, PartitionSpec(baxes, None, None, None))
    replicated = NamedSharding(mesh, PartitionSpec())
    z_shape = (cfg.batch_size, config.model.num_local + 1, config.model.z_dim)

    if strategy == "shard_map":
        problems = shard_map_problems(config, (mesh.shape["data"], mesh.shape["fsdp"], mesh.shape["model"]))
        if problems:
            raise ValueError(problems[0].removeprefix("config."))
        iteration = Iteration(G, D, g_opt, d_opt, cfg, axis_names=baxes)
    else:
        iteration = Iteration(G, D, g_opt, d_opt, cfg,
                              param_shardings=gathered_param_shardings(config, state_shardings))

    label_sharding = NamedSharding(mesh, bspec)

    def build(firing):
        def step_fn(state: TrainState, reals, *labels):  # labels: (int32 [B],) for a conditional model, else ()
            key = jax.random.wrap_key_data(state.rng)
            k_next, k_z, k_iter = jax.random.split(key, 3)
            # A fresh latent batch for each phase that takes one, from its stream (recipe.stream).
            zs = {p.name: jax.random.normal(jax.random.fold_in(k_z, stream(p.name)), z_shape, jnp.float32)
                  for p in cfg.running if "z" in p.spec.inputs}
            # Latents are split over the batch axes like the reals, so G's work is split too (without the
            # constraint XLA may run G replicated on the full batch on every device).
            zs = jax.lax.with_sharding_constraint(zs, NamedSharding(mesh, bspec))
            if strategy == "shard_map":
                body = jax.shard_map(
                    lambda s, r, z, kk, *y: iteration(s, r, z, kk, firing, *y),
                    mesh=mesh, in_specs=(PartitionSpec(), bspec, bspec, PartitionSpec()) + (bspec,) * len(labels),
                    out_specs=(PartitionSpec(), PartitionSpec()),
                    # Without varying-value tracking, grads w.r.t. the replicated params stay per-device
                    # (no implicit psum in the transpose): the program averages them itself, pmap-style.
                    check_vma=False)
                new, metrics = body(state, reals, zs, k_iter, *labels)
            else:
                new, metrics = iteration(state, reals, zs, k_iter, firing, *labels)
            new = new.replace(step=state.step + 1, rng=jax.random.key_data(k_next))
            return new, metrics

        labels_in = (label_sharding,) if cfg.conditional else ()
        return jax.jit(step_fn, in_shardings=(state_shardings, batch_sharding) + labels_in,
                       out_shardings=(state_shardings, replicated), donate_argnums=0)

    return TrainStep(cfg=cfg, build=build)
