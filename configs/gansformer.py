"""GANsformer presets: `--config configs/gansformer.py:<preset>[,size=s|m|l|xl][,recipe=reference|r3gan][,length=long]`.

Presets: shapes32, shapes64 (embedded procedural scenes, sized for a CPU); clevr256, ffhq256,
bedroom256, cityscapes256, ffhq1024 (the reference's defaults, SPEC-gansformer.md sections 2, 3, 6).
Every field can then be overridden, e.g. `--config.train.batch_size=64 --config.model.heads=2`.
"""

from ganjax import presets, sweep
from ganjax.config import base_config


def get_config(arg=None):
    name, options = presets.parse_arg(arg)
    c = base_config()
    c.name = f"gansformer-{name}"
    presets.apply_dataset(c, name)
    m = c.model
    # Attention as in the released models: the kmeans ("official") path, one iteration, one head,
    # multiplicative integration, at resolutions 4..128.
    m.attention, m.kmeans_iters, m.heads, m.integration = "official", 1, 1, "mul"
    m.attention_start_res, m.attention_end_res = 4, 128
    m.architecture_g = m.architecture_d = "resnet"
    if name == "clevr256" or name in presets.CPU:
        # CLEVR style: 8 local (a CPU preset: its own count) + 1 global latents of 16; no global modulation,
        # no mapping attention.
        m.num_local, m.z_dim, m.w_dim = presets.CPU.get(name, {}).get("num_local", 8), 16, 16
        m.global_modulation, m.mapping_attention = False, False
    else:
        # FFHQ / LSUN-Bedroom / Cityscapes: 16 local + 1 global latents of 32.
        m.num_local, m.z_dim, m.w_dim = 16, 32, 32
        m.global_modulation, m.mapping_attention = True, True
    if name not in presets.CPU:
        m.channel_base, m.channel_max = 32768, 512
    presets.apply_options(c, name, options)
    return c


# The sweeps of `ganjax sweep --config configs/gansformer.py:PRESET --sweep NAME` (default: attention).
SWEEPS = {
    "attention": "attention kind x heads",
    "sizes": "sizes s, m, l (widths and local latents scaled) at an equal compute budget",
    "gansformer_vs_stylegan2": "GANsformer and the StyleGAN2 baseline (configs/stylegan2.py) at an equal compute budget",
}


def get_sweep(name=None, config=None):
    """SWEEPS on the chosen preset. The compute-matched ones train every run to the same training PFLOPs
    (--config.train.total_pflops, default: what this preset's GANsformer spends on its total_kimg) and score it
    at the same fractions of it (--config.eval.at_fractions, default 0.25, 0.5, 1)."""
    name = name or "attention"
    if name == "attention":
        return sweep.grid({"model.attention": ["official", "simplex"], "model.heads": [1, 2]})
    if name == "sizes":
        return sweep.at_equal_compute(config, [{sweep.PRESET: {"size": s}} for s in ("s", "m", "l")])
    if name == "gansformer_vs_stylegan2":
        return sweep.at_equal_compute(config, [{sweep.CONFIG_FILE: f} for f in ("gansformer.py", "stylegan2.py")])
    raise ValueError(f"no sweep {name!r}; the sweeps: {', '.join(f'{k} ({v})' for k, v in SWEEPS.items())}")
