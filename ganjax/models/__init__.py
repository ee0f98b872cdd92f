"""GANsformer and StyleGAN2 generators and discriminators (Flax linen, used purely).

`build_models(ModelConfig) -> (G, D)`. Variables: G has 'params' and 'buffers' (mapping_network/w_avg and one
noise_const per noisy synthesis layer); D has 'params'. rng streams: 'noise' (random noise and const-noise
init), 'dropout' (attention dropout, train=True), 'mixing' (style mixing).

Conventions implemented (and where the references differ)
- Layout: NHWC activations; dense kernels [in, out], conv kernels HWIO [kh, kw, in, out] (PyTorch stores
  [out, in] and OIHW). The D epilogue's fc consumes the 4x4 features flattened in (h, w, c) order; PyTorch
  flattens (c, h, w), so its weight rows must be permuted when converting.
- Latents: z [B, k, z_dim], k = num_local + 1, the global latent LAST (both references).
- Mapping normalisation: 'joint' (PyTorch) normalises all local values together over (k-1)*z_dim and the
  global latent separately; 'component' (TF) normalises every local latent over its own z_dim and leaves
  the global latent unnormalised, as the TF reference does. With num_local = 0 both normalise the one latent.
- Mapping: 4 residual layers (fc -> lrelu*sqrt2 -> fc, + input, lrelu without gain) + an output fc with
  lrelu*sqrt2, lrmul 0.01 (`mapping_resnet=False`: 8 plain fc + output, StyleGAN2's). Mapping
  self-attention (PyTorch `ltnt2ltnt`): simplex attention with additive integration and no norm, before each
  residual layer, with the latent position embeddings on both sides; the residual skips the attention.
- w_avg: mean over batch and all k latents, decay 0.995; truncation w_avg + psi (w - w_avg) on all latents.
- num_ws: one per modulated conv (incl. conv_last) plus the final ToRGB; ws index i feeds block layers in
  order conv0, conv1, conv_last, ToRGB, and a skip G's intermediate ToRGB shares the next block's first
  index (PyTorch layout: 15 at 256^2).
- Attention 'official' = PyTorch's kmeans path with parametric centroids; concat[Q, P] is split into heads
  as a whole (with heads > 1, head 0 sees Q's first half... as in the reference). Logits scale 1/sqrt(C/heads).
  'simplex' and 'duplex' are our readings of the paper (ganjax/nn/attention.py). Integration 'both' is the
  paper's (PyTorch's split is broken). Attention dropout: rate/2 on cells and rate/2 on whole latents.
- The grid positional encoding is fixed (sinusoidal, w_dim wide), computed, not stored.
- Without global modulation (CLEVR) the affine layers still exist and run, as in the reference.
- Minibatch-std: group min(mbstd_group, B); sample i in group i mod (B / G), as the reference.
- Attention D (`d_attention`, TF --d-transformer): num_local aggregators of w_dim (uniform init) with
  position embeddings attend (simplex, additive) to the features of each D block in the attention range; at
  the end minibatch-std over aggregators, fc(w_dim, lrelu), fc(1) per aggregator, concatenated to the fc
  output before the final output layer.
- modconv 'fused_modconv=True' here means batch-shared weights (input/output scaling); PyTorch's
  fused_modconv means the grouped per-sample conv (our False). Both agree to ~1e-6.
"""

import importlib

from ganjax.models.config import ModelConfig

# The modules import Flax and JAX; ModelConfig (the config schema's model section) does not, so they load
# on first use: `import ganjax.config` stays free of JAX.
_LAZY = {"Generator": "ganjax.models.generator", "Discriminator": "ganjax.models.discriminator"}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ganjax.models' has no attribute {name!r}")


# Logical axis names carried by every parameter (None = a dim too small or too odd to shard).
LOGICAL_AXES = {
    "conv_in": "input channels of conv kernels (and of the affine/style outputs that scale them); "
               "D's epilogue fc input",
    "conv_out": "output channels of conv kernels, their biases, the 4x4 const; image channels entering "
                "attention projections",
    "embed": "latent width (z_dim / w_dim): mapping inputs, latent-side attention projections, position maps",
    "mlp": "mapping-network hidden/output width",
    "heads": "attention width = heads * head_size (Q/K/V outputs, modulation input): split by tensor parallelism",
    "latents": "the latent (T) axis: position embeddings, centroids, D aggregators",
}


def build_models(model_cfg: ModelConfig):
    """Validated (G, D) linen modules for the config."""
    model_cfg.validate()
    return __getattr__("Generator")(model_cfg), __getattr__("Discriminator")(model_cfg)


__all__ = ["ModelConfig", "Generator", "Discriminator", "build_models", "LOGICAL_AXES"]
