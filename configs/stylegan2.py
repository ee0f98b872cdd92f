"""StyleGAN2 baseline presets with the GANsformer presets' names and training defaults:
`--config configs/stylegan2.py:<preset>[,size=s|m|l|xl][,recipe=reference|r3gan][,length=long]`.

No local latents and no attention; z = w = 512 through a plain 9-fc mapping network (8 fc + the output
fc, as the reference's StyleGAN2 baseline); skip generator, resnet discriminator (StyleGAN2 config-f).
"""

from ganjax import presets
from ganjax.config import base_config


def get_config(arg=None):
    name, options = presets.parse_arg(arg)
    c = base_config()
    c.name = f"stylegan2-{name}"
    presets.apply_dataset(c, name)
    m = c.model
    m.num_local, m.z_dim, m.w_dim = 0, 512, 512
    m.mapping_layers, m.mapping_resnet = 4, False  # 8 plain fc + the output fc
    m.attention, m.mapping_attention, m.global_modulation = "none", False, True
    m.architecture_g, m.architecture_d = "skip", "resnet"
    if name not in presets.CPU:
        m.channel_base, m.channel_max = 32768, 512
    presets.apply_options(c, name, options)
    return c
