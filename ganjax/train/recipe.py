"""A training recipe as data: the phases of one iteration, in order, each one entry.

A phase names the network it updates (its optimizer), the inputs it consumes (a fresh latent batch 'z',
the real batch 'reals'), the networks it evaluates (for the communication model), its interval (every
iteration, or lazily every N), whether its loss is a lazy regulariser's (multiplied by the interval), and
its training FLOPs per image. Everything else is derived from the list:
- the step variants (ganjax/train/step.py): one compiled program per combination of lazy phases that
  fire together; which fire at step s is `fires(s)`;
- the optimizer steps of an iteration (`optimizer_steps`: a regulariser every iteration is summed into its
  network's main step) and the optimizers' lazy-regularisation scaling (ganjax/train/state.py, `lazy_ratio`);
- the per-phase programs of `ganjax bench` and `ganjax plan` (ganjax/train/programs.py);
- the FLOP count and the cost meter (ganjax/train/cost.py) and the scaling model's collectives.
A new phase is one function (`fn` below) and one entry in PHASES (with its `schedule`: the interval and
whether it runs, read from the config fields that turn it on).

A phase function computes, for one micro-batch, `(grads of its network, metrics, state updates)`:
    fn(it, key, inputs, live) -> (grads, metrics, updates)
`it` is the ganjax.train.step.Iteration (G, D and their helpers for the strategy), `inputs` the
micro-batch {'z': ..., 'reals': ...} (and 'labels' for a conditional model: G's fakes and D's reals take the
same labels, row by row), `live` the current {'g_params', 'g_buffers', 'd_params',
'pl_mean', 'augment'} (after earlier phases' updates) and 'hparams' (hyper-parameters at this iteration: read a
config value that can ramp with `it.value(name, live)`), `updates` a dict of new values for keys of `live` other than
the params (G's w_avg buffers, the path-length mean). Metrics and updates must be linear in the batch mean,
so averaging them over micro-batches and devices gives the full-batch values.
"""

import dataclasses
import functools
import operator
from fractions import Fraction
from typing import Callable

import jax
import jax.numpy as jnp

from ganjax.train import losses


@dataclasses.dataclass(frozen=True)
class PhaseSpec:
    name: str
    net: str  # "G" | "D": the network whose optimizer it steps
    inputs: tuple[str, ...]  # of "z", "reals"
    evaluates: tuple[str, ...]  # the networks it runs ("G", "D"): each has its parameters gathered under fsdp
    lazy: bool  # a regulariser: its loss is multiplied by its interval, and it can run every N iterations
    tag: str  # its name in a step variant's name ("r1" -> the "r1" variant)
    fn: Callable
    flops_per_image: Callable  # (ModelFlops, train config) -> training FLOPs per image it consumes
    schedule: Callable  # train config -> (interval, runs): see Phase
    batch_fraction: Callable = lambda train: Fraction(1)  # images it consumes per image of the batch (exact)
    scales_when_off: bool = False  # its interval scales its network's Adam even when configured off (the
    # reference's regularisers, G's path length and D's R1, do; phases it does not have scale only when on)


@dataclasses.dataclass(frozen=True)
class Phase:
    """A phase in a recipe: its spec and the config's interval. `runs` is False for a regulariser that
    is configured off (weight 0) but whose interval still scales its optimizer, as the reference does."""

    spec: PhaseSpec
    interval: int  # 1: every iteration; N > 1: at steps 0, N, 2N, ...; 0: never
    runs: bool

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def every_step(self) -> bool:
        return self.runs and (not self.spec.lazy or self.interval == 1) and self.interval > 0

    def fires(self, step: int) -> bool:
        return self.runs and self.interval > 0 and step % self.interval == 0

    @property
    def rate(self) -> float:
        """Runs per iteration."""
        return 1.0 / self.interval if self.runs and self.interval > 0 else 0.0


# -- the phases ------------------------------------------------------------------------------------------

def g_main(it, key, inputs, live):
    """G's adversarial loss on D's logits of fresh fakes (and, for a paired loss, of the reals); updates
    w_avg."""
    k_g, k_d = jax.random.split(it.device_key(key))
    labels = inputs.get("labels")
    real_logits = None
    if it.cfg.loss in losses.PAIRED:  # D's logits of the reals do not depend on G: no gradient through them
        real_logits = jax.lax.stop_gradient(it.discriminate(live["d_params"], inputs["reals"],
                                                            jax.random.fold_in(k_d, 1), live, labels))

    def loss_fn(gp):
        img, buffers = it.generate(gp, live["g_buffers"], inputs["z"], k_g, update_w_avg=True, labels=labels)
        logits = it.discriminate(live["d_params"], img, k_d, live, labels)
        return jnp.mean(losses.g_adv_loss(it.cfg.loss, logits, real_logits)), (buffers, logits)

    (loss, (buffers, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(live["g_params"])
    # The new w_avg is linear in the batch mean of w, so averaging it over micro-batches and devices gives
    # exactly the full-batch update.
    return grads, {"G/loss": loss, "D/scores_fake_g": jnp.mean(logits)}, {"g_buffers": buffers}


def g_pl(it, key, inputs, live):
    """Path-length regularisation of G (lazy, on batch / pl_batch_shrink latents)."""
    k_map, k_syn, k_pl = jax.random.split(it.device_key(key), 3)
    n = inputs["z"].shape[0] // it.cfg.pl_batch_shrink
    z = inputs["z"][:n]
    labels = None if inputs.get("labels") is None else inputs["labels"][:n]
    pl_mean = live["pl_mean"]

    def loss_fn(gp):
        v = {"params": it.compute_params(gp, "G"), "buffers": live["g_buffers"]}
        ws = it.G.apply(v, z, train=True, style_mixing_prob=it.cfg.style_mixing_prob, method="mapping",
                        labels=labels, rngs=it.g_rngs(k_map))
        synth = lambda w: it.G.apply(v, w, noise_mode=it.cfg.noise_mode, train=True, method="synthesis",
                                     rngs=it.g_rngs(k_syn))
        lengths = losses.path_lengths(synth, ws, k_pl)
        # The running mean uses the global batch mean (pmean'd in the per-device program).
        new_mean = jax.lax.stop_gradient(pl_mean + (it.mean(jnp.mean(lengths)) - pl_mean) * it.cfg.pl_decay)
        penalty = jnp.square(lengths - new_mean)
        loss = jnp.mean(penalty) * it.cfg.pl_weight * it.cfg.interval("g_pl")
        return loss, (new_mean, jnp.mean(penalty), jnp.mean(lengths))

    (loss, (new_mean, penalty, length)), grads = jax.value_and_grad(loss_fn, has_aux=True)(live["g_params"])
    return grads, {"G/reg_loss": loss, "G/pl_penalty": penalty, "G/pl_length": length}, {"pl_mean": new_mean}


def d_main(it, key, inputs, live):
    """D's adversarial loss on fresh fakes (no gradient into G) and the reals."""
    k_g, k_fake, k_real = jax.random.split(it.device_key(key), 3)
    labels = inputs.get("labels")
    fakes, _ = it.generate(live["g_params"], live["g_buffers"], inputs["z"], k_g, update_w_avg=False, labels=labels)
    fakes = jax.lax.stop_gradient(fakes)

    def loss_fn(dp):
        fake_logits = it.discriminate(dp, fakes, k_fake, live, labels)
        real_logits = it.discriminate(dp, inputs["reals"], k_real, live, labels)
        terms = losses.d_adv_loss(it.cfg.loss, real_logits, fake_logits)
        return functools.reduce(operator.add, map(jnp.mean, terms)), (real_logits, fake_logits)

    (loss, (real_logits, fake_logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(live["d_params"])
    # D/signs_real, the mean sign of D on the (augmented) reals, is what adaptive augmentation steers by.
    return grads, {"D/loss": loss, "D/scores_real": jnp.mean(real_logits), "D/scores_fake": jnp.mean(fake_logits),
                   "D/signs_real": jnp.mean(jnp.sign(real_logits))}, {}


def d_r1(it, key, inputs, live):
    """R1: gamma/2 |grad_x D(x)|^2 at the reals (lazy)."""
    k = it.device_key(key)

    def loss_fn(dp):
        penalty = losses.gradient_penalty(lambda x: it.discriminate(dp, x, k, live, inputs.get("labels")),
                                          inputs["reals"])
        return jnp.mean(penalty) * (it.value("r1_gamma", live) / 2) * it.cfg.interval("d_r1"), jnp.mean(penalty)

    (loss, penalty), grads = jax.value_and_grad(loss_fn, has_aux=True)(live["d_params"])
    return grads, {"D/reg_loss": loss, "D/r1_penalty": penalty}, {}


def d_r2(it, key, inputs, live):
    """R2: gamma/2 |grad_x D(x)|^2 at fresh fakes, which get no gradient into G (lazy, or every step with
    interval 1)."""
    k_g, k_d = jax.random.split(it.device_key(key))
    labels = inputs.get("labels")
    fakes, _ = it.generate(live["g_params"], live["g_buffers"], inputs["z"], k_g, update_w_avg=False, labels=labels)
    fakes = jax.lax.stop_gradient(fakes)

    def loss_fn(dp):
        penalty = losses.gradient_penalty(lambda x: it.discriminate(dp, x, k_d, live, labels), fakes)
        return jnp.mean(penalty) * (it.value("r2_gamma", live) / 2) * it.cfg.interval("d_r2"), jnp.mean(penalty)

    (loss, penalty), grads = jax.value_and_grad(loss_fn, has_aux=True)(live["d_params"])
    return grads, {"D/r2_loss": loss, "D/r2_penalty": penalty}, {}


# Training FLOPs per image by the usual backward = 2 x forward rule (f: ganjax.models.flops.ModelFlops):
# g_main: G forward (a second mapping pass when style mixing is on), D forward on the fakes, D backward to its
#         input only (1x), G backward (2x); a paired loss adds D's forward on the reals.
# d_main: G forward without gradients, D forward + backward (3x) on the fakes and on the reals.
# d_r1:   on the reals (d_r2: on fakes, after a G forward without gradients): D forward, the input
#         gradient (1x), and the backward through both for the parameter
#         gradient of the penalty (2x of each): 6x. (Minibatch-std makes D's input gradient depend on the
#         forward activations, so the second backward runs through the forward pass too; XLA's count of the
#         compiled R1 phase agrees within 2%: docs/measurements.md.)
# g_pl:   per path-length image: G forward, the gradient to ws through synthesis (1x), and the backward
#         through both (2x): 3 x (G + synthesis).
def _mixing(f, t):
    return f.mapping if t.style_mixing_prob > 0 else 0.0


def _paired(f, t):
    return f.d if t.loss in losses.PAIRED else 0.0


def _every_step(t):
    return 1, True


def _lazy(interval_field: str, weight_field: str):
    def schedule(t):
        interval = int(getattr(t, interval_field))
        return interval, getattr(t, weight_field) > 0 and interval > 0
    return schedule


# The order is the order of the phases in an iteration and, for good, the index of each phase's random stream
# (`stream`): new phases go at the end, so existing ones keep their draws (jax.random.split(key, n)[:m] is
# the same for every n >= m).
PHASES = {spec.name: spec for spec in (
    PhaseSpec("g_main", "G", ("z", "reals"), ("G", "D"), False, "", g_main,
              lambda f, t: 3 * f.g + _mixing(f, t) + 2 * f.d + _paired(f, t), _every_step),
    PhaseSpec("g_pl", "G", ("z",), ("G",), True, "pl", g_pl,
              lambda f, t: 3 * (f.g + _mixing(f, t) + f.synthesis), _lazy("pl_interval", "pl_weight"),
              lambda t: Fraction(1, int(t.pl_batch_shrink)), scales_when_off=True),
    PhaseSpec("d_main", "D", ("z", "reals"), ("G", "D"), False, "", d_main,
              lambda f, t: f.g + _mixing(f, t) + 6 * f.d, _every_step),
    PhaseSpec("d_r1", "D", ("reals",), ("D",), True, "r1", d_r1, lambda f, t: 6 * f.d,
              _lazy("r1_interval", "r1_gamma"), scales_when_off=True),
    PhaseSpec("d_r2", "D", ("z",), ("G", "D"), True, "r2", d_r2, lambda f, t: f.g + _mixing(f, t) + 6 * f.d,
              _lazy("r2_interval", "r2_gamma")),
)}


def stream(name: str) -> int:
    """The index of a phase's random stream."""
    return list(PHASES).index(name)


def phase_keys(key) -> dict:
    """{phase name: its key} of an iteration key."""
    return dict(zip(PHASES, jax.random.split(key, len(PHASES))))


def recipe(train) -> tuple[Phase, ...]:
    """The phases config.train asks for, in iteration order."""
    return tuple(Phase(spec, *spec.schedule(train)) for spec in PHASES.values())


def optimizer_steps(phases) -> tuple[tuple[Phase, ...], ...]:
    """The phases (in iteration order) grouped into their optimizer steps. A regulariser every iteration
    (interval 1) joins its network's main phase: their gradients, taken at the same parameters, are summed
    into one Adam step, which is the gradient of the summed loss (R3GAN's one D loss with R1 and R2; the
    reference's 'both' phases when it has no lazy interval). A lazy one (interval N > 1) is a step of its own
    on the parameters the main step left, every N iterations."""
    groups: list[list[Phase]] = []
    for p in phases:
        if p.spec.lazy and p.interval == 1:
            main = next((g for g in groups if g[0].spec.net == p.spec.net and not g[0].spec.lazy), None)
            if main is not None:
                main.append(p)
                continue
        groups.append([p])
    return tuple(map(tuple, groups))


def lazy_ratio(phases, net: str) -> float:
    """The factor on a network's Adam lr (and exponent on its betas) that keeps its dynamics with lazy
    regularisation: its optimizer steps 1 + sum(1/N_i) times per iteration for lazy phases every N_i > 1
    iterations, so the reference's N/(N+1) for one (a regulariser every iteration adds no step: it is part of
    the main one, `optimizer_steps`). As the reference, a lazy phase configured off still counts its
    configured interval (the default G runs at lr x 4/5 with path length off) where the reference has it
    (PhaseSpec.scales_when_off)."""
    extra = sum((Fraction(1, p.interval) for p in phases if p.spec.net == net and p.spec.lazy and p.interval > 1
                 and (p.runs or p.spec.scales_when_off)), Fraction(0))
    return float(1 / (1 + extra))  # exact rational, rounded once: N/(N+1) to the last bit


def variant_name(firing: tuple[str, ...]) -> str:
    """'plain', or the tags of the lazy phases that fire, e.g. 'r1', 'pl+r1'."""
    return "+".join(PHASES[n].tag for n in firing) or "plain"
