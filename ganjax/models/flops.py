"""Analytic FLOPs and parameter counts, walked from the model's layer shapes.

A "FLOP" is one multiply or one add (a multiply-accumulate is 2), the convention of XLA's cost analysis
and of MFU. Counted: convolutions, fully-connected layers, the StyleGAN modulation/demodulation, attention
(projections, logits, k-means centroids, the value mix and integration fc, as folded by ganjax/nn/attention.py),
and FIR resampling filters.
Not counted: elementwise work (bias, activations, noise, normalisation, softmax), which is memory-bound
and small; XLA counts it, which is most of the difference in `cross_check`.

The walk mirrors the PyTorch reference layer by layer: parameter counts come out of the same walk and equal
the reference's (tests/test_bench_units.py), which checks the walk. Training FLOPs per phase and per
iteration are built on it by the recipe (ganjax/train/recipe.py, ganjax/train/cost.py).
Attention keys and latent position maps exist as parameters but never reach the output in the "official"
(k-means) attention; XLA removes them as dead code, so their FLOPs are not counted.
"""

import dataclasses
import math

from ganjax.models.config import D_CMAP_LAYERS


@dataclasses.dataclass
class Layer:
    name: str
    kind: str  # conv | fc | modulation | attention | resample
    flops: float  # forward FLOPs per image
    params: int = 0


def conv2d_flops(h: int, w: int, cin: int, cout: int, k: int, stride: int = 1, exact_padding: bool = False) -> float:
    """FLOPs of a 'SAME'-padded conv producing ceil(h/stride) x ceil(w/stride) outputs, per image.

    exact_padding=True counts only taps that land inside the input (what XLA's cost analysis of
    lax.conv_general_dilated reports); False counts every tap (what a matmul over padded patches does).
    """
    oh, ow = -(-h // stride), -(-w // stride)
    if not exact_padding:
        return 2.0 * oh * ow * k * k * cin * cout
    return 2.0 * _taps(h, oh, k, stride) * _taps(w, ow, k, stride) * cin * cout


def _taps(n: int, out: int, k: int, stride: int) -> int:
    pad_total = max((out - 1) * stride + k - n, 0)
    lo = pad_total // 2
    return sum(1 for o in range(out) for t in range(k) if 0 <= o * stride - lo + t < n)


def dense_flops(rows: int, fan_in: int, fan_out: int) -> float:
    return 2.0 * rows * fan_in * fan_out


def _get(cfg, name):
    return cfg[name] if isinstance(cfg, dict) else getattr(cfg, name)


def _num_classes(cfg) -> int:
    return int(cfg.get("num_classes", 0)) if isinstance(cfg, dict) else cfg.num_classes


def channels(cfg, res: int) -> int:
    return int(min(_get(cfg, "channel_base") // res, _get(cfg, "channel_max")))


def attention_resolutions(cfg) -> list[int]:
    if _get(cfg, "attention") == "none" or _get(cfg, "num_local") == 0:
        return []
    lo, hi = _get(cfg, "attention_start_res"), _get(cfg, "attention_end_res")
    return [r for r in _block_resolutions(cfg) if lo <= r <= hi]


def _block_resolutions(cfg) -> list[int]:
    return [2**i for i in range(2, int(math.log2(_get(cfg, "resolution"))) + 1)]


# The [1,3,3,1] FIR filter is separable: two 1-D passes of 4 taps (multiply + add) per output element and
# channel (ganjax.nn.resample), i.e. 16 FLOPs where the 4x4 outer product would be 32.
FIR_TAPS = 8


def _fc(name, rows, fan_in, fan_out, bias=True):
    return Layer(name, "fc", dense_flops(rows, fan_in, fan_out), fan_in * fan_out + (fan_out if bias else 0))


def mapping_layers(cfg) -> list[Layer]:
    """The mapping network per image: a global MLP on the global latent and, with local latents, a local
    MLP over each of them (4 residual layers of 2 fc + an output fc each), with optional self-attention."""
    z, w, t = _get(cfg, "z_dim"), _get(cfg, "w_dim"), _get(cfg, "num_local")
    nres = _get(cfg, "mapping_layers")
    classes = _num_classes(cfg)
    out = [_fc("mapping.embed", 1, classes, z)] if classes else []
    for branch, rows in (("global", 1), ("local", t)):
        if rows == 0:
            continue
        # a conditional plain stack takes the label's embedding concatenated to the global latent
        dim_in = 2 * z if branch == "global" and classes and not _get(cfg, "mapping_resnet") else z
        for i in range(nres):
            if branch == "local" and _get(cfg, "mapping_attention"):
                out += _attention_mapping(f"mapping.{branch}.sa{i}", t, w)
            out.append(_fc(f"mapping.{branch}.l{i}.fc0", rows, dim_in, w))
            out.append(_fc(f"mapping.{branch}.l{i}.fc1", rows, w, w))
            dim_in = w
        out.append(_fc(f"mapping.{branch}.out", rows, w, w))
    return out


def _attention_mapping(name, t, w) -> list[Layer]:
    # self-attention among the t local latents: q, k, v, pos maps, logits, mix, integration fc
    flops = dense_flops(t, w, w) * 4 + 2.0 * t * t * w * 2 + dense_flops(t, w, w)
    return [Layer(name, "attention", flops, 6 * (w * w + w))]


def _attention_synthesis(cfg, name, res, c) -> list[Layer]:
    w, t = _get(cfg, "w_dim"), _get(cfg, "num_local")
    f = res * res
    kind = _get(cfg, "attention")
    # q (c x c); k, v, from_pos, to_pos (w x c); modulation (c x c, or c x 2c for "both")
    out_c = 2 * c if _get(cfg, "integration") == "both" else c
    params = (c * c + c) + 4 * (w * c + c) + (c * out_c + out_c)
    flops = dense_flops(t, w, c)  # values
    flops += dense_flops(f, w, c)  # grid position map (fixed grid, but applied per image)
    if kind == "official":
        params += 2 * c + t * 2 * c  # att_weight [heads, 1, 2c/heads], centroids [1, heads, t, 2c/heads]
        iters = _get(cfg, "kmeans_iters")
        # With one iteration the queries are folded into the centroids (ganjax/nn/attention.py): the logits
        # contract x against [c, t] instead of forming x Wq (the [c, c] fold is per batch, not counted).
        flops += dense_flops(f, c, c) if iters > 1 else 0.0
        flops += 2.0 * f * t * 2 * c * iters  # logits against the centroids, once per k-means iteration
        flops += 2.0 * t * f * 2 * c * (iters - 1)  # centroids recomputed from assignments
    elif kind in ("simplex", "duplex"):  # queries and keys (with latent positions) are live
        flops += dense_flops(f, c, c) + dense_flops(t, w, c) * 2 + 2.0 * f * t * c
        if kind == "duplex":
            flops += 2.0 * t * f * c * 2  # latents attend to the image first (bottom-up)
    else:
        raise ValueError(f"model.attention: the FLOP counter has no layer walk for attention {kind!r}")
    # The integration fc is folded into the values: (probs V) Wm = probs (V Wm), V Wm [t, out_c] per image.
    flops += dense_flops(t, c, out_c) + 2.0 * f * t * out_c
    return [Layer(name, "attention", flops, params)]


def _synthesis_layer(cfg, name, cin, cout, res, up, attention, bias=True, noise=True, k=3, demodulate=True):
    """A modulated conv (3x3, optional x2 up) + optional attention, per image."""
    w = _get(cfg, "w_dim")
    rin = res // up
    out = [_fc(f"{name}.affine", 1, w, cin)]
    if _get(cfg, "global_modulation"):
        if _get(cfg, "fused_modconv"):
            # batch-shared weights: scale inputs by s, demodulation coefficients as s^2 @ sum_k(w^2), scale outputs
            mod = rin * rin * cin + (res * res * cout + dense_flops(1, cin, cout) if demodulate else 0)
        else:
            # per-sample weights w*s, demodulation sum over (cin, k, k), rescale
            mod = cout * cin * k * k * (4 if demodulate else 1)
        out.append(Layer(f"{name}.modulation", "modulation", mod))
    if up == 1:
        out.append(Layer(f"{name}.conv", "conv", conv2d_flops(res, res, cin, cout, k), cout * cin * k * k))
    else:  # transposed stride-2 conv at the input resolution, then the FIR low-pass on the output
        out.append(Layer(f"{name}.conv", "conv", conv2d_flops(rin, rin, cin, cout, k), cout * cin * k * k))
        out.append(Layer(f"{name}.fir", "resample", 2.0 * FIR_TAPS * res * res * cout))
    out[-1 if up == 1 else -2].params += (cout if bias else 0) + (1 if noise else 0)
    if attention:
        out += _attention_synthesis(cfg, f"{name}.attention", res, cout)
    return out


def synthesis_layers(cfg) -> list[Layer]:
    arch = _get(cfg, "architecture_g")
    img_c = _get(cfg, "num_channels")
    att = set(attention_resolutions(cfg))
    resolutions = _block_resolutions(cfg)
    out = []
    for res in resolutions:
        c = channels(cfg, res)
        last = res == resolutions[-1]
        b = f"synthesis.b{res}"
        if res == 4:
            out.append(Layer(f"{b}.const", "conv", 0.0, c * 16))
        else:
            cin = channels(cfg, res // 2)
            if arch == "resnet":  # skip: FIR-upsample the input, then 1x1 conv, no bias
                out.append(Layer(f"{b}.skip.fir", "resample", 2.0 * FIR_TAPS * res * res * cin))
                out.append(Layer(f"{b}.skip", "conv", conv2d_flops(res, res, cin, c, 1), cin * c))
            out += _synthesis_layer(cfg, f"{b}.conv0", cin, c, res, 2, res in att)
        out += _synthesis_layer(cfg, f"{b}.conv1", c, c, res, 1, res in att)
        if last and _get(cfg, "conv_last"):
            out += _synthesis_layer(cfg, f"{b}.conv_last", c, c, res, 1, False, bias=False, noise=False)
        if last or arch == "skip":
            out += _synthesis_layer(cfg, f"{b}.torgb", c, img_c, res, 1, False, noise=False, k=1, demodulate=False)
            if arch == "skip" and res > 4:
                out.append(Layer(f"{b}.img_up", "resample", 2.0 * FIR_TAPS * res * res * img_c))
    return out


def generator_layers(cfg) -> list[Layer]:
    pos = _get(cfg, "num_local") * _get(cfg, "w_dim")
    return mapping_layers(cfg) + synthesis_layers(cfg) + ([Layer("latent_pos", "fc", 0.0, pos)] if pos else [])


def discriminator_layers(cfg) -> list[Layer]:
    if _get(cfg, "d_attention"):
        raise ValueError("model.d_attention: the FLOP counter has no layer walk for attention in D")
    arch = _get(cfg, "architecture_d")
    img_c = _get(cfg, "num_channels")
    out = []
    top = _get(cfg, "resolution")
    for res in reversed(_block_resolutions(cfg)[1:]):
        cin, cout = channels(cfg, res), channels(cfg, res // 2)
        b = f"d.b{res}"
        if res == top or arch == "skip":
            out.append(Layer(f"{b}.fromrgb", "conv", conv2d_flops(res, res, img_c, cin, 1), img_c * cin + cin))
            if arch == "skip" and res < top:
                out.append(Layer(f"{b}.img_down", "resample", 2.0 * FIR_TAPS * res * res * img_c))
        out.append(Layer(f"{b}.conv0", "conv", conv2d_flops(res, res, cin, cin, 3), cin * cin * 9 + cin))
        # down: FIR on the (padded) input, then a stride-2 3x3 conv
        out.append(Layer(f"{b}.conv1.fir", "resample", 2.0 * FIR_TAPS * (res + 1) ** 2 * cin))
        out.append(Layer(f"{b}.conv1", "conv", conv2d_flops(res, res, cin, cout, 3, stride=2), cin * cout * 9 + cout))
        if arch == "resnet":
            out.append(Layer(f"{b}.skip.fir", "resample", 2.0 * FIR_TAPS * (res // 2) ** 2 * cin))
            out.append(Layer(f"{b}.skip", "conv", conv2d_flops(res // 2, res // 2, cin, cout, 1), cin * cout))
    c = channels(cfg, 4)
    mb = _get(cfg, "mbstd_channels")
    out.append(Layer("d.b4.conv", "conv", conv2d_flops(4, 4, c + mb, c, 3), (c + mb) * c * 9 + c))
    out.append(_fc("d.b4.fc", 1, c * 16, c))
    classes = _num_classes(cfg)
    if not classes:
        out.append(_fc("d.b4.out", 1, c, 1))
        return out
    # projection: the last fc to cmap_dim = c, the label embedding and its fc layers, the dot product
    out.append(_fc("d.b4.out", 1, c, c))
    out.append(_fc("d.b4.embed", 1, classes, c))
    out += [_fc(f"d.b4.cmap{i}", 1, c, c) for i in range(D_CMAP_LAYERS)]
    out.append(Layer("d.b4.projection", "fc", 2.0 * c))
    return out


def total(layers: list[Layer]) -> float:
    return float(sum(layer.flops for layer in layers))


def param_count(layers: list[Layer]) -> int:
    return int(sum(layer.params for layer in layers))


def by_kind(layers: list[Layer]) -> dict[str, float]:
    out: dict[str, float] = {}
    for layer in layers:
        out[layer.kind] = out.get(layer.kind, 0.0) + layer.flops
    return out


@dataclasses.dataclass
class ModelFlops:
    """Forward FLOPs per image of each network, and the parameter counts of the same walk."""
    mapping: float
    synthesis: float
    d: float
    g_params: int
    d_params: int

    @property
    def g(self) -> float:
        return self.mapping + self.synthesis


def model_flops(model_cfg) -> ModelFlops:
    m, s, d = mapping_layers(model_cfg), synthesis_layers(model_cfg), discriminator_layers(model_cfg)
    return ModelFlops(total(m), total(s), total(d), param_count(generator_layers(model_cfg)), param_count(d))
