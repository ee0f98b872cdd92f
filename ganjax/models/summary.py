"""Parameter counts and layer layout of a model config, from abstract shapes only (jax.eval_shape)."""

import jax
import jax.numpy as jnp
import numpy as np
from flax.core import meta

from ganjax.models import build_models
from ganjax.models.config import ModelConfig
from ganjax.models.mapping import example_labels


def _count(tree) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))


def abstract_variables(cfg: ModelConfig, batch: int = 4):
    """(G variables, D variables) as ShapeDtypeStructs: nothing is materialised."""
    G, D = build_models(cfg)
    key = jax.random.key(0)
    rngs = {"params": key, "noise": key, "dropout": key, "mixing": key}
    z = jax.ShapeDtypeStruct((batch, cfg.num_latents, cfg.z_dim), jnp.float32)
    img = jax.ShapeDtypeStruct((batch, cfg.resolution, cfg.resolution, cfg.num_channels), jnp.float32)
    labels = example_labels(cfg, batch)
    gv = jax.eval_shape(lambda z: G.init(rngs, z, labels=labels), z)
    dv = jax.eval_shape(lambda x: D.init({"params": key, "dropout": key}, x, labels=labels), img)
    return gv, dv


def summarize(cfg: ModelConfig) -> dict:
    """Parameter counts (G mapping / synthesis / latent position embeddings / total, D), num_ws, attention."""
    gv, dv = abstract_variables(cfg)
    gp, dp = meta.unbox(gv["params"]), meta.unbox(dv["params"])
    return {
        "resolution": cfg.resolution,
        "num_latents": cfg.num_latents,
        "num_ws": cfg.num_ws,
        "params": {
            "G_mapping": _count(gp["mapping_network"]),
            "G_synthesis": _count(gp["synthesis_network"]),
            "G_latent_pos": _count(gp.get("pos", {})),
            "G_total": _count(gp),
            "D": _count(dp),
        },
        "G_buffers": _count(gv.get("buffers", {})),
        "channels": {str(r): cfg.channels(r) for r in cfg.block_resolutions},
        "attention": cfg.attention,
        "attention_layers": [f"b{r}.{name}" for r, name in cfg.attention_layers],
        "d_attention_resolutions": list(cfg.d_attention_resolutions),
    }
