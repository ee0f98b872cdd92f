"""Generator = latent position embeddings + mapping network + synthesis network."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from ganjax.models.config import ModelConfig
from ganjax.models.mapping import MappingNetwork
from ganjax.models.synthesis import SynthesisNetwork
from ganjax.nn.layers import boxed_param


class Generator(nn.Module):
    cfg: ModelConfig

    def setup(self):
        c = self.cfg
        # Learned latent position embeddings [k-1, w_dim], uniform [0, 1) init (the reference's G.pos).
        self.pos = (boxed_param(self, "pos", jax.nn.initializers.uniform(1.0), (c.num_local, c.w_dim),
                                ("latents", "embed")) if c.num_local > 0 else None)
        self.mapping_network = MappingNetwork(c)
        self.synthesis_network = SynthesisNetwork(c)

    def _map(self, z, truncation_psi, train, update_w_avg, labels):
        c = self.cfg
        x = self.mapping_network(z, self.pos, labels, train=train, update_w_avg=update_w_avg)  # [B, k, w]
        ws = jnp.broadcast_to(x[:, :, None, :], (x.shape[0], x.shape[1], c.num_ws, c.w_dim))
        if truncation_psi != 1.0:
            w_avg = self.mapping_network.variables["buffers"]["w_avg"]
            ws = w_avg + truncation_psi * (ws - w_avg)
        return ws

    def mapping(self, z, truncation_psi: float = 1.0, train: bool = False, style_mixing_prob: float = 0.0,
                update_w_avg: bool = False, labels=None):
        """z [B, k, z_dim] (labels int [B] for a conditional model) -> ws [B, k, num_ws, w_dim].

        Style mixing (prob > 0, rng 'mixing'): with that probability, the layers from a random cutoff in
        [1, num_ws) on take the ws of fresh latents with the same labels (one cutoff per batch, as the
        reference's loss)."""
        ws = self._map(z, truncation_psi, train, update_w_avg, labels)
        if style_mixing_prob > 0:
            num_ws = self.cfg.num_ws
            k1, k2, k3 = jax.random.split(self.make_rng("mixing"), 3)
            ws2 = self._map(jax.random.normal(k1, z.shape, z.dtype), truncation_psi, train, False, labels)
            cutoff = jax.random.randint(k2, (), 1, num_ws)
            cutoff = jnp.where(jax.random.uniform(k3, ()) < style_mixing_prob, cutoff, num_ws)
            mix = jnp.arange(num_ws)[None, None, :, None] >= cutoff
            ws = jnp.where(mix, ws2, ws)
        return ws

    def synthesis(self, ws, noise_mode: str = "random", train: bool = False, return_attention: bool = False):
        """ws [B, k, num_ws, w_dim] -> img [B, R, R, C] float32 (or (img, attn [B, T, layers, heads, R, R]))."""
        return self.synthesis_network(ws, self.pos, noise_mode=noise_mode, train=train,
                                      return_attention=return_attention)

    def __call__(self, z, truncation_psi: float = 1.0, noise_mode: str = "random", train: bool = False,
                 style_mixing_prob: float = 0.0, return_attention: bool = False, update_w_avg: bool = False,
                 labels=None):
        ws = self.mapping(z, truncation_psi, train, style_mixing_prob, update_w_avg, labels)
        return self.synthesis(ws, noise_mode, train, return_attention)
