"""The documented seed scheme (ganjax/sampling.py) written out independently of the sampler: seed s ->
z = normal(key(s), [1, k, z_dim]), noise key fold_in(key(s), 1), one full G.apply per image with G's own
truncation (not the sampler's mapping / truncate / synthesis split). Tests compare the sampler to it."""

import jax
import jax.numpy as jnp
import numpy as np


def reference_images(G, variables, seeds, psi=1.0, noise_mode="const"):
    out = []
    for s in seeds:
        key = jax.random.key(int(s))
        z = jax.random.normal(key, (1, G.cfg.num_latents, G.cfg.z_dim), jnp.float32)
        out.append(np.asarray(G.apply(variables, z, truncation_psi=psi, noise_mode=noise_mode,
                                      rngs={"noise": jax.random.fold_in(key, 1)}))[0])
    return np.stack(out)
