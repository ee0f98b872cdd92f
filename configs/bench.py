"""The four reference CPU workloads (../shared/bench/official-cpu-configs.md), exactly as the authors'
PyTorch code was measured on them: `ganjax bench --config configs/bench.py:<preset>[,size=s|m|l|xl]`.

  cpu_small   GANsformer, CLEVR style (8 + 1 latents of 16, no global modulation, no mapping attention),
              channel_base 4096 / max 128, 32^2, batch 8          G 1,564,970  D 1,346,305 params
  cpu_medium  the same at 64^2, channel_base 16384 / max 256        G 7,602,860  D 6,625,281
  ffhq64      GANsformer FFHQ style (16 + 1 latents of 32, global modulation, mapping attention),
              channel_base 32768 / max 512, 64^2, batch 4         G 30,379,340 D 26,488,833
  sg2_small   StyleGAN2 (k = 1, z = w = 512, 9-fc mapping, skip G, resnet D, no attention),
              channel_base 4096 / max 128, 32^2, batch 8          G 4,336,019  D 1,346,305

Training as measured: G main + D main every iteration, R1 (gamma 10) every 16th, path length off, style
mixing 0.9, EMA half-life 10 kimg, Adam(beta1 0, beta2 0.99, eps 1e-8), attention as released (k-means, 1
iteration, 1 head, multiplicative integration, layer norm), fp32. Optimiser: lazy-regularisation scaling as the reference (G by 4/5 with path length off: lr 0.0016,
beta2 0.99^0.8), D: lr 0.002 and beta2 0.99, which ganjax scales by 16/17 for R1 exactly as the reference.
"""

from ganjax import presets
from ganjax.config import base_config

PRESETS = ("cpu_small", "cpu_medium", "ffhq64", "sg2_small")

CLEVR_STYLE = dict(num_local=8, z_dim=16, w_dim=16, global_modulation=False, mapping_attention=False)
FFHQ_STYLE = dict(num_local=16, z_dim=32, w_dim=32, global_modulation=True, mapping_attention=True)
STYLEGAN2 = dict(num_local=0, z_dim=512, w_dim=512, global_modulation=True, mapping_attention=False,
                 attention="none", architecture_g="skip", mapping_resnet=False)  # reference baseline: plain fc
MODELS = {
    "cpu_small": dict(resolution=32, channel_base=4096, channel_max=128, **CLEVR_STYLE),
    "cpu_medium": dict(resolution=64, channel_base=16384, channel_max=256, **CLEVR_STYLE),
    "ffhq64": dict(resolution=64, channel_base=32768, channel_max=512, **FFHQ_STYLE),
    "sg2_small": dict(resolution=32, channel_base=4096, channel_max=128, **STYLEGAN2),
}
BATCH = {"cpu_small": 8, "cpu_medium": 8, "ffhq64": 4, "sg2_small": 8}


def get_config(arg=None):
    parts = [p.strip() for p in (arg or "cpu_small").split(",") if p.strip()]
    name = parts[0]
    if name not in PRESETS:
        raise ValueError(f"configs/bench.py preset {name!r} is not one of {PRESETS}")
    c = base_config()
    c.name = f"bench-{name}"
    m = c.model
    # Every architecture field the workloads fix, set explicitly (not inherited from defaults).
    m.num_channels, m.architecture_g, m.architecture_d = 3, "resnet", "resnet"
    m.mapping_layers, m.mapping_lrmul, m.mapping_norm, m.mapping_resnet = 4, 0.01, "joint", True
    m.attention, m.attention_start_res, m.attention_end_res = "official", 4, 128
    m.heads, m.kmeans_iters, m.integration, m.attention_dropout = 1, 1, "mul", 0.12
    m.conv_last, m.mbstd_group, m.mbstd_channels, m.d_attention = True, 4, 1, False
    # The reference trains with PyTorch's fused_modconv=False (scale activations, shared conv weights),
    # which is ganjax's fused_modconv=True.
    m.fused_modconv = True
    m.compute_dtype, m.remat, m.conv_impl = "float32", False, "auto"
    m.update(MODELS[name])

    d = c.data
    d.dataset, d.mirror, d.aspect_ratio = "shapes", False, 1.0

    t = c.train
    t.batch_size = BATCH[name]
    t.loss, t.style_mixing_prob, t.noise_mode = "logistic", 0.9, "random"
    t.lr_g, t.lr_d, t.beta1, t.beta2, t.eps = 0.002, 0.002, 0.0, 0.99, 1e-8
    t.r1_gamma, t.r1_interval = 10.0, 16
    t.pl_weight, t.pl_interval = 0.0, 4
    t.ema_kimg, t.ema_rampup = 10.0, 0.0
    t.grad_accum = 1

    c.parallel.strategy = "dp"
    c.parallel.mesh_data, c.parallel.mesh_fsdp, c.parallel.mesh_model = 1, 1, 1  # one device, as measured
    for part in parts[1:]:
        key, _, value = part.partition("=")
        if key != "size" or value not in presets.SIZES:
            raise ValueError(f"configs/bench.py option {part!r}: expected size=one of {tuple(presets.SIZES)}")
        presets.apply_size(c, value)
    return c
