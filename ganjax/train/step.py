"""The training iteration as pure jitted functions of (state, batch).

One iteration = the reference's phases in order: G main (adversarial loss, w_avg update), G reg (path
length, every pl_interval steps), D main (adversarial loss), D reg (R1, every r1_interval steps), then the
EMA of G. Each phase is its own optimizer update, and a regulariser's loss is multiplied by its interval
(lazy regularisation). The lazy phases are chosen on the host from the step count; each combination is
a separately compiled function (see `TrainStep`), so no step pays for a regulariser it does not run.

Strategies: `dp`, `fsdp`, `fsdp_tp` are one global program whose state shardings come from the logical
axis rules (XLA inserts the collectives); `shard_map` is a per-device data-parallel program that averages
gradients with an explicit lax.pmean, like pmap/DDP.

Randomness: z for every phase is drawn for the global batch, so any sharding sees the same latents.
Inside the models (noise, dropout, style mixing) each device of a shard_map program and each micro-batch
folds its index into the key, so their draws are independent.
"""

import dataclasses
import math
import time
from typing import Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec

from ganjax.parallel.distributed import barrier
from ganjax.parallel.mesh import batch_axes
from ganjax.parallel.rules import for_compute
from ganjax.train import losses
from ganjax.train.state import TrainState, d_reg_interval, g_reg_interval

NOISE_MODES = ("random", "const", "none")


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """The train-config values the step depends on (static under jit)."""

    batch_size: int
    loss: str
    style_mixing_prob: float
    noise_mode: str
    r1_gamma: float
    r1_interval: int  # 0 = no R1
    pl_weight: float
    pl_interval: int  # 0 = no path-length regularisation
    pl_decay: float
    pl_batch_shrink: int
    grad_accum: int
    ema_kimg: float
    ema_rampup: float

    @classmethod
    def from_config(cls, config) -> "StepConfig":
        t = config.train
        if t.loss not in losses.LOSSES:
            raise ValueError(f"train.loss: must be one of {losses.LOSSES}, got {t.loss!r}")
        if t.noise_mode not in NOISE_MODES:
            raise ValueError(f"train.noise_mode: must be one of {NOISE_MODES}, got {t.noise_mode!r}")
        return cls(
            batch_size=int(t.batch_size), loss=t.loss, style_mixing_prob=float(t.style_mixing_prob),
            noise_mode=t.noise_mode, r1_gamma=float(t.r1_gamma), r1_interval=d_reg_interval(t),
            pl_weight=float(t.pl_weight), pl_interval=g_reg_interval(t), pl_decay=float(t.pl_decay),
            pl_batch_shrink=int(t.pl_batch_shrink), grad_accum=int(t.grad_accum),
            ema_kimg=float(t.ema_kimg), ema_rampup=float(t.ema_rampup))

    def phases_at(self, step: int) -> tuple[bool, bool]:
        """(run R1, run path length) at iteration `step` (lazy phases fire at steps 0, N, 2N, ...)."""
        r1 = self.r1_interval > 0 and step % self.r1_interval == 0
        pl = self.pl_interval > 0 and step % self.pl_interval == 0
        return r1, pl

    def variant_weights(self) -> dict[tuple[bool, bool], float]:
        """Fraction of loop iterations that run each (R1, PL) variant, over one full period of both."""
        period = math.lcm(max(self.r1_interval, 1), max(self.pl_interval, 1))
        counts: dict[tuple[bool, bool], int] = {}
        for s in range(period):
            v = self.phases_at(s)
            counts[v] = counts.get(v, 0) + 1
        return {v: c / period for v, c in sorted(counts.items())}


def variant_name(variant: tuple[bool, bool]) -> str:
    """'plain', 'r1', 'pl' or 'r1+pl'."""
    return "plain" if not any(variant) else "+".join(n for n, on in zip(("r1", "pl"), variant) if on)


def _micro_batches(x, n: int):
    """[B, ...] -> [n, B/n, ...] with micro-batch j = rows j, j+n, j+2n, ...: every batch shard holds an
    equal part of every micro-batch, so slicing needs no communication."""
    return jnp.moveaxis(x.reshape(x.shape[0] // n, n, *x.shape[1:]), 1, 0)


def _accumulate(fn, n: int, key, *batched):
    """Mean over n micro-batches of fn(key_j, *micro_batch_j) -> (grads, aux) pytrees of floats."""
    if n == 1:
        return fn(key, *batched)
    micro = [_micro_batches(b, n) for b in batched]

    def body(total, xs):
        i, *mb = xs
        out = fn(jax.random.fold_in(key, i), *mb)
        return jax.tree.map(jnp.add, total, out), None

    shapes = jax.eval_shape(fn, key, *[m[0] for m in micro])
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    total, _ = jax.lax.scan(body, zeros, (jnp.arange(n), *micro))
    return jax.tree.map(lambda t: t / n, total)


def _all_finite(tree):
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


class Iteration:
    """The phases of one iteration for one model pair and one strategy (axis_names is None for the global
    program, the batch mesh axes for the per-device shard_map program; param_shardings, the storage
    shardings of (G params, D params), when the models must use their params gathered over 'fsdp')."""

    def __init__(self, G, D, g_opt, d_opt, cfg: StepConfig, axis_names=None, param_shardings=None):
        self.G, self.D, self.g_opt, self.d_opt, self.cfg = G, D, g_opt, d_opt, cfg
        self.axis_names = axis_names
        self.param_shardings = param_shardings

    def _compute_params(self, params, which: int):
        """G (0) or D (1) params as the models use them (see ganjax.parallel.rules.compute_sharding)."""
        return params if self.param_shardings is None else for_compute(params, self.param_shardings[which])

    # -- collectives: identity in the global program, explicit means in the per-device one --
    def _mean(self, tree):
        return tree if self.axis_names is None else jax.lax.pmean(tree, self.axis_names)

    def _device_key(self, key):
        return key if self.axis_names is None else jax.random.fold_in(key, jax.lax.axis_index(self.axis_names))

    def _g_rngs(self, key):
        k_noise, k_drop, k_mix = jax.random.split(key, 3)
        return {"noise": k_noise, "dropout": k_drop, "mixing": k_mix}

    def _generate(self, g_params, g_buffers, z, key, update_w_avg):
        kwargs = dict(train=True, noise_mode=self.cfg.noise_mode, style_mixing_prob=self.cfg.style_mixing_prob,
                      rngs=self._g_rngs(key))
        variables = {"params": self._compute_params(g_params, 0), "buffers": g_buffers}
        if update_w_avg:
            img, updates = self.G.apply(variables, z, update_w_avg=True, mutable=["buffers"], **kwargs)
            return img, updates["buffers"]
        return self.G.apply(variables, z, **kwargs), None

    def _discriminate(self, d_params, img, key):
        return self.D.apply({"params": self._compute_params(d_params, 1)}, img, train=True, rngs={"dropout": key})

    # -- phases: each returns (grads, aux) for one micro-batch --
    def _g_main(self, key, z, g_params, g_buffers, d_params):
        k_g, k_d = jax.random.split(self._device_key(key))

        def loss_fn(gp):
            img, buffers = self._generate(gp, g_buffers, z, k_g, update_w_avg=True)
            logits = self._discriminate(d_params, img, k_d)
            return jnp.mean(losses.g_adv_loss(self.cfg.loss, logits)), (buffers, logits)

        (loss, (buffers, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(g_params)
        # The new w_avg is linear in the batch mean of w, so averaging it over micro-batches and devices
        # gives exactly the full-batch update.
        return grads, {"buffers": buffers, "G/loss": loss, "D/scores_fake_g": jnp.mean(logits)}

    def _g_pl(self, key, z, g_params, g_buffers, pl_mean):
        k_map, k_syn, k_pl = jax.random.split(self._device_key(key), 3)
        z = z[: z.shape[0] // self.cfg.pl_batch_shrink]

        def loss_fn(gp):
            v = {"params": self._compute_params(gp, 0), "buffers": g_buffers}
            ws = self.G.apply(v, z, train=True, style_mixing_prob=self.cfg.style_mixing_prob, method="mapping",
                              rngs=self._g_rngs(k_map))
            synth = lambda w: self.G.apply(v, w, noise_mode=self.cfg.noise_mode, train=True, method="synthesis",
                                           rngs=self._g_rngs(k_syn))
            lengths = losses.path_lengths(synth, ws, k_pl)
            # The running mean uses the global batch mean (pmean'd in the per-device program).
            new_mean = jax.lax.stop_gradient(
                pl_mean + (self._mean(jnp.mean(lengths)) - pl_mean) * self.cfg.pl_decay)
            penalty = jnp.square(lengths - new_mean)
            loss = jnp.mean(penalty) * self.cfg.pl_weight * self.cfg.pl_interval
            return loss, (new_mean, jnp.mean(penalty), jnp.mean(lengths))

        (loss, (new_mean, penalty, length)), grads = jax.value_and_grad(loss_fn, has_aux=True)(g_params)
        return grads, {"pl_mean": new_mean, "G/reg_loss": loss, "G/pl_penalty": penalty, "G/pl_length": length}

    def _d_main(self, key, z, reals, g_params, g_buffers, d_params):
        k_g, k_fake, k_real = jax.random.split(self._device_key(key), 3)
        fakes, _ = self._generate(g_params, g_buffers, z, k_g, update_w_avg=False)
        fakes = jax.lax.stop_gradient(fakes)

        def loss_fn(dp):
            fake_logits = self._discriminate(dp, fakes, k_fake)
            real_logits = self._discriminate(dp, reals, k_real)
            real_term, fake_term = losses.d_adv_loss(self.cfg.loss, real_logits, fake_logits)
            return jnp.mean(real_term) + jnp.mean(fake_term), (real_logits, fake_logits)

        (loss, (real_logits, fake_logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(d_params)
        return grads, {"D/loss": loss, "D/scores_real": jnp.mean(real_logits),
                       "D/scores_fake": jnp.mean(fake_logits)}

    def _d_r1(self, key, reals, d_params):
        k = self._device_key(key)

        def loss_fn(dp):
            penalty = losses.r1_penalty(lambda x: self._discriminate(dp, x, k), reals)
            return jnp.mean(penalty) * (self.cfg.r1_gamma / 2) * self.cfg.r1_interval, jnp.mean(penalty)

        (loss, penalty), grads = jax.value_and_grad(loss_fn, has_aux=True)(d_params)
        return grads, {"D/reg_loss": loss, "D/r1_penalty": penalty}

    # -- the iteration --
    def _update(self, opt, params, opt_state, grads):
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    def __call__(self, state: TrainState, reals, zs: dict, key, *, do_r1: bool, do_pl: bool):
        """One iteration on (this device's part of) the batch; returns (new state, metrics).

        state.rng and state.step are advanced by the caller. A non-finite loss or gradient anywhere in
        the iteration discards the whole update (params, buffers, optimizer states, EMA) and counts a skip.
        """
        n = self.cfg.grad_accum
        keys = dict(zip(("g_main", "g_pl", "d_main", "d_r1"), jax.random.split(key, 4)))
        metrics, finite = {}, []
        g_params, g_opt_state, d_params, d_opt_state = (state.g_params, state.g_opt_state, state.d_params,
                                                        state.d_opt_state)

        def run(name, fn, batched, *args):
            grads, aux = self._mean(_accumulate(lambda k, *mb: fn(k, *mb, *args), n, keys[name], *batched))
            if self.param_shardings is not None:  # reduce(-scatter) the gradients straight to the params' shards
                grads = jax.lax.with_sharding_constraint(grads, self.param_shardings[0 if name.startswith("g") else 1])
            finite.append(_all_finite(grads))
            metrics[f"grad_norm/{name}"] = optax.tree.norm(grads)
            return grads, aux

        grads, aux = run("g_main", self._g_main, (zs["g_main"],), g_params, state.g_buffers, d_params)
        g_buffers = aux.pop("buffers")
        metrics.update(aux)
        g_params, g_opt_state = self._update(self.g_opt, g_params, g_opt_state, grads)

        pl_mean = state.pl_mean
        if do_pl:
            grads, aux = run("g_pl", self._g_pl, (zs["g_pl"],), g_params, g_buffers, state.pl_mean)
            pl_mean = aux.pop("pl_mean")
            metrics.update(aux)
            g_params, g_opt_state = self._update(self.g_opt, g_params, g_opt_state, grads)

        grads, aux = run("d_main", self._d_main, (zs["d_main"], reals), g_params, g_buffers, d_params)
        metrics.update(aux)
        d_params, d_opt_state = self._update(self.d_opt, d_params, d_opt_state, grads)

        if do_r1:
            grads, aux = run("d_r1", self._d_r1, (reals,), d_params)
            metrics.update(aux)
            d_params, d_opt_state = self._update(self.d_opt, d_params, d_opt_state, grads)

        beta = losses.ema_beta(state.step, self.cfg.batch_size, self.cfg.ema_kimg, self.cfg.ema_rampup)
        g_ema_params = jax.tree.map(lambda p, e: p + (e - p) * beta, g_params, state.g_ema_params)

        ok = _all_finite([metrics[k] for k in metrics if "loss" in k]) & jnp.all(jnp.stack(finite))
        new = state.replace(g_params=g_params, g_buffers=g_buffers, g_ema_params=g_ema_params,
                            g_ema_buffers=g_buffers, d_params=d_params, g_opt_state=g_opt_state,
                            d_opt_state=d_opt_state, pl_mean=pl_mean)
        new = jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, state)
        new = new.replace(skips=jnp.where(ok, 0, state.skips + 1))
        metrics.update({"skipped": (~ok).astype(jnp.float32), "consecutive_skips": new.skips,
                        "ema_beta": beta})
        return new, metrics


PHASE_Z = ("g_main", "g_pl", "d_main")


@dataclasses.dataclass
class TrainStep:
    """Jitted iteration functions, one per combination of lazy phases, compiled on first use.

    Separate functions rather than one program with lax.cond: a plain step carries no regulariser branch
    (no conditional for XLA to schedule around, no state copies across branches), at the price of one
    more compilation (two programs for the default R1-only setting). Measured on cpu_small (1 CPU device,
    jax 0.10.2, both timed in one process on a loaded 2-core machine): separate programs 0.63 s plain /
    0.80 s with R1; one program with lax.cond over the R1 phase 8.3 s / 12.3 s, with one 96 s compile
    instead of 41 + 55 s.

    Each variant is compiled ahead of its first run (or loaded from the persistent compilation cache,
    ganjax/compilation_cache.py), and with several processes they all wait at a barrier of the
    distributed runtime before running it: one process may load it from the cache in a second while
    another compiles for minutes, and the first collective would otherwise time out waiting.
    `on_compiled(name, seconds)` is told each compile (or cache load) as it finishes.
    """

    cfg: StepConfig
    build: Callable[[bool, bool], Callable]
    on_compiled: Callable[[str, float], None] | None = None
    _cache: dict = dataclasses.field(default_factory=dict)
    _compiled: dict = dataclasses.field(default_factory=dict)

    def variant(self, do_r1: bool, do_pl: bool):
        key = (bool(do_r1), bool(do_pl))
        if key not in self._cache:
            self._cache[key] = self.build(*key)
        return self._cache[key]

    def __call__(self, state, reals, step: int):
        """Runs iteration number `step` (a host int: which lazy phases run is decided without a sync)."""
        key = self.cfg.phases_at(step)
        if key not in self._compiled:
            t0 = time.perf_counter()
            self._compiled[key] = self.variant(*key).lower(state, reals).compile()
            barrier(f"ganjax.train_step.{variant_name(key)}")
            if self.on_compiled is not None:
                self.on_compiled(variant_name(key), time.perf_counter() - t0)
        return self._compiled[key](state, reals)


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
        if mesh.shape["model"] != 1:
            raise ValueError(f"parallel.mesh_model: the shard_map strategy is data-parallel only, got "
                             f"mesh_model={mesh.shape['model']}")
        shards = mesh.shape["data"] * mesh.shape["fsdp"]
        local = cfg.batch_size // shards
        if local % cfg.grad_accum:
            raise ValueError(f"train.grad_accum: the per-device batch {local} is not divisible by it "
                             f"({cfg.grad_accum})")
        micro = local // cfg.grad_accum
        group = min(int(config.model.mbstd_group), micro)
        if group > 0 and micro % group:
            raise ValueError(f"model.mbstd_group: the per-device micro-batch {micro} of the shard_map strategy "
                             f"is not divisible by the minibatch-std group {group}")
        iteration = Iteration(G, D, g_opt, d_opt, cfg, axis_names=baxes)
    else:
        iteration = Iteration(G, D, g_opt, d_opt, cfg, param_shardings=gathered_param_shardings(config, state_shardings))

    def build(do_r1, do_pl):
        def step_fn(state: TrainState, reals):
            key = jax.random.wrap_key_data(state.rng)
            k_next, k_z, k_iter = jax.random.split(key, 3)
            zs = {name: jax.random.normal(jax.random.fold_in(k_z, i), z_shape, jnp.float32)
                  for i, name in enumerate(PHASE_Z)}
            # Latents are split over the batch axes like the reals, so G's work is split too (without the
            # constraint XLA may run G replicated on the full batch on every device).
            zs = jax.lax.with_sharding_constraint(zs, NamedSharding(mesh, bspec))
            if strategy == "shard_map":
                body = jax.shard_map(
                    lambda s, r, z, kk: iteration(s, r, z, kk, do_r1=do_r1, do_pl=do_pl),
                    mesh=mesh, in_specs=(PartitionSpec(), bspec, bspec, PartitionSpec()),
                    out_specs=(PartitionSpec(), PartitionSpec()),
                    # Without varying-value tracking, grads w.r.t. the replicated params stay per-device
                    # (no implicit psum in the transpose): the program averages them itself, pmap-style.
                    check_vma=False)
                new, metrics = body(state, reals, zs, k_iter)
            else:
                new, metrics = iteration(state, reals, zs, k_iter, do_r1=do_r1, do_pl=do_pl)
            new = new.replace(step=state.step + 1, rng=jax.random.key_data(k_next))
            return new, metrics

        return jax.jit(step_fn, in_shardings=(state_shardings, batch_sharding),
                       out_shardings=(state_shardings, replicated), donate_argnums=0)

    return TrainStep(cfg=cfg, build=build)
