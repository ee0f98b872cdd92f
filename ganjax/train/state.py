"""The train state pytree and the two Adam optimizers with lazy-regularisation scaling."""

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from ganjax.models.mapping import example_labels
from ganjax.parallel.rules import tree_shardings
from ganjax.train import recipe
from ganjax.train.ramps import Ramps


@flax.struct.dataclass
class TrainState:
    g_params: dict
    g_buffers: dict  # w_avg and the const noise maps
    g_ema_params: dict
    g_ema_buffers: dict
    d_params: dict
    g_opt_state: optax.OptState
    d_opt_state: optax.OptState
    step: jax.Array  # int32 iterations done; kimg = step * batch_size / 1000
    rng: jax.Array  # raw uint32 key data (checkpointable like any other array)
    pl_mean: jax.Array  # running mean of path lengths (path-length regulariser)
    skips: jax.Array  # int32 non-finite iterations skipped in a row
    # Adaptive augmentation's {'p', 'signs'} (ganjax/augment/adaptive.py); empty when it is not adaptive, so
    # those states (and their checkpoints) have no leaves for it.
    augment: dict = flax.struct.field(default_factory=dict)

    def kimg(self, batch_size: int):
        return self.step * batch_size / 1000.0


def adam_hparams(train, which: str) -> dict:
    """lr, b1, b2 of G's ('g') or D's ('d') Adam after lazy-regularisation scaling (recipe.lazy_ratio):
    with one regulariser every N steps lr * N/(N+1) and beta ** (N/(N+1)), as the reference (StyleGAN2-ADA's
    training loop, which GANsformer keeps); the reference's default G Adam runs at lr 0.002 * 4/5 and
    beta2 0.99 ** (4/5) with path length off."""
    ratio = recipe.lazy_ratio(recipe.recipe(train), "G" if which == "g" else "D")
    lr = train.lr_g if which == "g" else train.lr_d
    return {"lr": lr * ratio, "b1": train.beta1 ** ratio, "b2": train.beta2 ** ratio}


def make_optimizers(train) -> tuple[optax.GradientTransformation, optax.GradientTransformation]:
    """optax.adam puts eps outside the square root with bias correction, exactly like torch.optim.Adam.
    A network whose lr or beta2 ramps (ganjax/train/ramps.py) gets its Adam with those hyper-parameters in its
    optimizer state (optax.inject_hyperparams), set by the step each iteration; the others keep optax.adam's
    plain state (and their checkpoints' layout)."""
    ramps = Ramps.from_config(train)
    opts = []
    for which, net in (("g", "G"), ("d", "D")):
        h = adam_hparams(train, which)
        adam = optax.inject_hyperparams(optax.adam) if ramps.ramps_optimizer(net) else optax.adam
        opts.append(adam(h["lr"], b1=h["b1"], b2=h["b2"], eps=train.eps))
    return tuple(opts)


def init_state_boxed(G, D, g_opt, d_opt, model_cfg, key, augment=None) -> TrainState:
    """A fresh state whose params (and Adam moments) keep the models' logical-axis boxes; `augment` its
    TrainState.augment (AugmentConfig.init_state()).

    Run it under jax.eval_shape to read the logical axes, and under jit (then unbox) to materialise the
    state directly in its target shardings.
    """
    k_g, k_d, k_noise, k_drop, k_mix, k_state = jax.random.split(key, 6)
    z = jnp.zeros((1, model_cfg.num_latents, model_cfg.z_dim), jnp.float32)
    labels = example_labels(model_cfg)
    g_vars = G.init({"params": k_g, "noise": k_noise, "dropout": k_drop, "mixing": k_mix}, z, labels=labels)
    img = jnp.zeros((1, model_cfg.resolution, model_cfg.resolution, model_cfg.num_channels), jnp.float32)
    d_vars = D.init({"params": k_d, "dropout": k_drop}, img, labels=labels)
    g_params, g_buffers, d_params = g_vars["params"], g_vars.get("buffers", {}), d_vars["params"]
    return TrainState(
        g_params=g_params,
        g_buffers=g_buffers,
        g_ema_params=g_params,
        g_ema_buffers=g_buffers,
        d_params=d_params,
        g_opt_state=g_opt.init(g_params),
        d_opt_state=d_opt.init(d_params),
        step=jnp.zeros((), jnp.int32),
        rng=jax.random.key_data(k_state),
        pl_mean=jnp.zeros((), jnp.float32),
        skips=jnp.zeros((), jnp.int32),
        augment={} if augment is None else augment,
    )


def unbox(tree):
    return nn.meta.unbox(tree)


def abstract_state(G, D, g_opt, d_opt, model_cfg, mesh, rules, augment=None):
    """(boxed abstract state, NamedSharding pytree of the unboxed state) without allocating anything."""
    boxed = jax.eval_shape(lambda k: init_state_boxed(G, D, g_opt, d_opt, model_cfg, k, augment),
                           jax.random.key(0))
    return boxed, tree_shardings(boxed, mesh, rules)


def create_state(G, D, g_opt, d_opt, model_cfg, mesh, rules, seed: int, augment=None):
    """A fresh state, initialised by a jitted function whose outputs are born in their target shardings
    (a large model never exists unsharded on one device). Returns (state, state_shardings)."""
    _, shardings = abstract_state(G, D, g_opt, d_opt, model_cfg, mesh, rules, augment)
    init = jax.jit(lambda k: unbox(init_state_boxed(G, D, g_opt, d_opt, model_cfg, k, augment)),
                   out_shardings=shardings)
    return init(jax.random.key(seed)), shardings
