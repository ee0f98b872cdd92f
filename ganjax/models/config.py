"""ModelConfig: the `model` section of the config as a frozen, validated dataclass."""

import dataclasses
import importlib
import math

ARCH_G = ("resnet", "skip")
ARCH_D = ("resnet",)
MAPPING_NORM = ("joint", "component")
DTYPES = ("float32", "bfloat16")
D_CMAP_LAYERS = 2  # a conditional D's fc layers after its label embedding (StyleGAN2-ADA's CIFAR-10 setting, map=2)


def _pow2(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1 and v & (v - 1) == 0


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    resolution: int = 32
    num_channels: int = 3
    architecture_g: str = "resnet"  # resnet | skip
    architecture_d: str = "resnet"
    channel_base: int = 32768  # channels at resolution r: min(channel_base // r, channel_max)
    channel_max: int = 512
    z_dim: int = 32
    w_dim: int = 32
    num_local: int = 16  # local latent components; k = num_local + 1 (global is last). 0 = StyleGAN2.
    mapping_layers: int = 4  # residual layers per MLP (each 2 fc) + 1 output fc => 9 fc
    mapping_lrmul: float = 0.01
    mapping_norm: str = "joint"  # joint (PyTorch reference) | component (TF reference)
    mapping_attention: bool = True  # self-attention among local latents in the mapping network
    mapping_resnet: bool = True  # residual mapping layers (GANsformer); False = plain fc stack (StyleGAN2)
    global_modulation: bool = True  # the global latent drives StyleGAN modulation; off = plain convs
    attention: str = "official"  # official | simplex | duplex | none
    attention_start_res: int = 4  # attention at resolutions start..end (inclusive)
    attention_end_res: int = 128
    heads: int = 1
    kmeans_iters: int = 1
    integration: str = "mul"  # mul | add | both
    attention_dropout: float = 0.12
    conv_last: bool = True  # the PyTorch reference's extra 3x3 conv in the last block
    fused_modconv: bool = True  # batch-shared weights with input/output scaling; False = per-sample grouped
    mbstd_group: int = 4
    mbstd_channels: int = 1
    d_attention: bool = False  # latent aggregators in D (TF reference's --d-transformer)
    # Class-conditional: N classes (0 = unconditional). G embeds the label into its global latent, D scores
    # by projection onto an embedding of it (StyleGAN2-ADA); the labels come from data.label.
    num_classes: int = 0
    compute_dtype: str = "float32"  # float32 | bfloat16 (params stay float32)
    remat: bool = False
    # auto: XLA conv for shared kernels, the matmul form for transposed / per-sample ones on CPU | matmul | xla
    conv_impl: str = "auto"

    @classmethod
    def from_config(cls, model_section) -> "ModelConfig":
        """From config.model (a ConfigDict or a dict); fields it lacks keep their defaults."""
        names = {f.name for f in dataclasses.fields(cls)}
        items = dict(model_section.items()) if hasattr(model_section, "items") else dict(model_section)
        unknown = sorted(set(items) - names)
        if unknown:
            raise ValueError(f"model.{unknown[0]}: unknown field (known: {sorted(names)})")
        return cls(**items)

    # ---- derived ----
    @property
    def num_latents(self) -> int:
        """k = num_local + 1 (the global latent is the last one)."""
        return self.num_local + 1

    @property
    def log2_res(self) -> int:
        return int(math.log2(self.resolution))

    @property
    def block_resolutions(self) -> tuple:
        return tuple(2 ** i for i in range(2, self.log2_res + 1))

    def channels(self, res: int) -> int:
        return int(min(self.channel_base // res, self.channel_max))

    @property
    def num_ws(self) -> int:
        """Per-layer latents: one per modulated conv (incl. conv_last) plus the final ToRGB.

        As the PyTorch reference, a skip generator's intermediate ToRGB layers reuse the next block's
        first index."""
        return 2 * self.log2_res - 2 + int(self.conv_last)

    def has_attention(self, res: int) -> bool:
        return (self.attention != "none" and self.num_local > 0
                and self.attention_start_res <= res <= self.attention_end_res)

    @property
    def attention_resolutions(self) -> tuple:
        return tuple(r for r in self.block_resolutions if self.has_attention(r))

    @property
    def attention_layers(self) -> tuple:
        """(resolution, layer name) of every generator attention layer, in order."""
        out = []
        for r in self.attention_resolutions:
            out += [(r, "conv1")] if r == 4 else [(r, "conv0"), (r, "conv1")]
        return tuple(out)

    @property
    def d_attention_resolutions(self) -> tuple:
        if not self.d_attention:
            return ()
        return tuple(r for r in self.block_resolutions[1:]
                     if self.attention_start_res <= r <= self.attention_end_res)

    # ---- validation ----
    def validate_resolution(self):
        """Raise ValueError('model.resolution: ...') unless it is a power of two >= 4 (the one place this
        rule lives: the dataset preparation checks it here too)."""
        r = self.resolution
        if isinstance(r, bool) or not isinstance(r, int) or r < 4:
            raise ValueError(f"model.resolution: {r!r} must be an integer >= 4")
        if not _pow2(r):
            raise ValueError(f"model.resolution: {r} is not a power of two (4, 8, ..., 1024)")

    def validate(self) -> "ModelConfig":
        """Raise ValueError('model.<field>: ...') for the first invalid setting."""
        def fail(field, msg):
            raise ValueError(f"model.{field}: {msg}")

        def need_int(field, lo):
            v = getattr(self, field)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                fail(field, f"{v!r} must be an integer >= {lo}")

        def need_choice(field, allowed):
            if getattr(self, field) not in allowed:
                fail(field, f"{getattr(self, field)!r} is not one of {allowed}")

        def need_bool(field):
            if not isinstance(getattr(self, field), bool):
                fail(field, f"{getattr(self, field)!r} must be True or False")

        self.validate_resolution()
        for f in ("num_channels", "channel_base", "channel_max", "z_dim", "w_dim", "mapping_layers",
                  "heads", "kmeans_iters", "mbstd_group"):
            need_int(f, 1)
        need_int("num_local", 0)
        need_int("mbstd_channels", 0)
        need_int("num_classes", 0)
        for f in ("mapping_attention", "mapping_resnet", "global_modulation", "conv_last", "fused_modconv",
                  "d_attention", "remat"):
            need_bool(f)
        need_choice("architecture_g", ARCH_G)
        need_choice("architecture_d", ARCH_D)
        # The attention kinds, integrations and convolution forms come from the modules that implement them
        # (imported here, when a model section is checked: they import JAX, this module does not).
        attention, conv = importlib.import_module("ganjax.nn.attention"), importlib.import_module("ganjax.nn.conv")
        need_choice("attention", attention.KINDS + ("none",))
        need_choice("integration", attention.INTEGRATIONS)
        need_choice("mapping_norm", MAPPING_NORM)
        need_choice("compute_dtype", DTYPES)
        need_choice("conv_impl", ("auto",) + conv.IMPLS)
        if not (isinstance(self.mapping_lrmul, (int, float)) and self.mapping_lrmul > 0):
            fail("mapping_lrmul", f"{self.mapping_lrmul!r} must be > 0")
        if not (isinstance(self.attention_dropout, (int, float)) and 0 <= self.attention_dropout < 1):
            fail("attention_dropout", f"{self.attention_dropout!r} must be in [0, 1)")
        if self.channel_base // self.resolution < 1:
            fail("channel_base", f"{self.channel_base} gives no channels at resolution {self.resolution} "
                                 f"(channels = min(channel_base // res, channel_max))")
        if self.mapping_resnet and self.z_dim != self.w_dim:
            fail("z_dim", f"{self.z_dim} must equal model.w_dim={self.w_dim} with residual mapping layers")
        if self.num_local == 0:
            if self.attention != "none":
                fail("attention", f"{self.attention!r} needs local latents (model.num_local >= 1); "
                                  f"use 'none' for StyleGAN2")
            if self.mapping_attention:
                fail("mapping_attention", "True needs local latents (model.num_local >= 1)")
            if self.d_attention:
                fail("d_attention", "True needs aggregator latents (model.num_local >= 1)")
        if self.mapping_attention and self.w_dim % self.heads:
            fail("heads", f"{self.heads} does not divide the mapping attention width model.w_dim={self.w_dim}")
        if self.attention != "none" or self.d_attention:
            for f in ("attention_start_res", "attention_end_res"):
                if not _pow2(getattr(self, f)) or getattr(self, f) < 4:
                    fail(f, f"{getattr(self, f)!r} must be a power of two >= 4 (a block resolution)")
            if self.attention_start_res > self.resolution:
                fail("attention_start_res", f"{self.attention_start_res} is above the resolution "
                                            f"{self.resolution}: no layer would have attention")
            if self.attention_end_res < self.attention_start_res:
                fail("attention_end_res", f"{self.attention_end_res} is below model.attention_start_res="
                                          f"{self.attention_start_res}")
            if self.w_dim % 4:
                fail("w_dim", f"{self.w_dim} must be divisible by 4 (sinusoidal grid encoding)")
        for r in self.attention_resolutions:
            if self.channels(r) % self.heads:
                fail("heads", f"{self.heads} does not divide the {self.channels(r)} channels at resolution {r}")
        if self.d_attention and self.w_dim % self.heads:
            fail("heads", f"{self.heads} does not divide the aggregator width model.w_dim={self.w_dim}")
        return self
