"""Adversarial losses, the zero-centred gradient penalties (R1 on reals, R2 on fakes), the path-length
regulariser and the EMA schedule.

Conventions follow the StyleGAN2(-ADA) / GANsformer PyTorch training code: per-sample losses averaged over
the batch; regularisers multiplied by their lazy interval; the EMA half-life counted in images. The
relativistic pairing loss is R3GAN's (brownvc/R3GAN, "The GAN is dead; long live the GAN!", NeurIPS 2024):
fake i is paired with real i of the batch.
"""

import jax
import jax.numpy as jnp

LOSSES = ("logistic", "hinge", "relativistic")
PAIRED = ("relativistic",)  # losses whose G loss also needs D's logits of the reals


def _unknown(kind):
    return ValueError(f"train.loss: must be one of {LOSSES}, got {kind!r}")


def g_adv_loss(kind: str, fake_logits, real_logits=None):
    """Per-sample generator loss. logistic: non-saturating -log sigmoid(D(G(z))). hinge: -D(G(z)) (the
    usual hinge-GAN generator loss; the GANsformer PyTorch code's `-clamp(1 + logits, 0)` is not used).
    relativistic: softplus(-(D(fake_i) - D(real_i))), with D's logits of the paired reals."""
    if kind == "logistic":
        return jax.nn.softplus(-fake_logits)
    if kind == "hinge":
        return -fake_logits
    if kind == "relativistic":
        return jax.nn.softplus(-(fake_logits - real_logits))
    raise _unknown(kind)


def d_adv_loss(kind: str, real_logits, fake_logits):
    """Per-sample terms of the discriminator loss, whose batch means add up to it: (real term, fake term),
    or for the relativistic loss the one paired term softplus(-(D(real_i) - D(fake_i)))."""
    if kind == "logistic":
        return jax.nn.softplus(-real_logits), jax.nn.softplus(fake_logits)
    if kind == "hinge":
        return jax.nn.relu(1.0 - real_logits), jax.nn.relu(1.0 + fake_logits)
    if kind == "relativistic":
        return (jax.nn.softplus(-(real_logits - fake_logits)),)
    raise _unknown(kind)


def gradient_penalty(d_logits_fn, images):
    """Per-sample |grad_x D(x)|^2 at `images`: R1 at the reals, R2 at the fakes (before the gamma/2 factor)."""
    grads = jax.grad(lambda x: jnp.sum(d_logits_fn(x)))(images)
    return jnp.sum(jnp.square(grads.astype(jnp.promote_types(grads.dtype, jnp.float32))), axis=tuple(range(1, grads.ndim)))



def path_lengths(synthesis_fn, ws, key):
    """Per-sample path length |J_w^T y| for y ~ N(0, I)/sqrt(H*W) (StyleGAN2's definition: the squared
    gradient summed over w_dim, averaged over the other w axes, square-rooted)."""
    img, vjp = jax.vjp(synthesis_fn, ws)
    noise = jax.random.normal(key, img.shape, jnp.float32) / jnp.sqrt(img.shape[1] * img.shape[2])
    (grads,) = vjp(noise.astype(img.dtype))
    sq = jnp.sum(jnp.square(grads.astype(jnp.promote_types(grads.dtype, jnp.float32))), axis=-1)
    return jnp.sqrt(jnp.mean(sq, axis=tuple(range(1, sq.ndim))))


def ema_beta(step, batch_size: int, ema_kimg: float, ema_rampup: float):
    """Per-step decay of G_ema: half-life of ema_kimg thousand images, optionally ramped up as
    min(ema_kimg, cur_kimg * ema_rampup); cur_kimg counts the images seen before this step."""
    ema_nimg = jnp.asarray(ema_kimg * 1000.0, jnp.float32)
    if ema_rampup > 0:
        cur_nimg = step.astype(jnp.float32) * batch_size
        ema_nimg = jnp.minimum(ema_nimg, cur_nimg * ema_rampup)
    return 0.5 ** (batch_size / jnp.maximum(ema_nimg, 1e-8))
