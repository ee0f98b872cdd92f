"""Convolution with FIR up/down-sampling (StyleGAN2's conv2d_resample), built on ganjax.nn.conv.

- up x2:   transposed stride-2 conv, then the FIR filter with gain 4 (1x1 kernels: conv first, then FIR up).
- down x2: FIR filter, then a stride-2 conv (1x1 kernels: FIR downsample, then conv).
"""

from ganjax.nn.conv import conv2d, conv2d_transpose
from ganjax.nn.resample import DEFAULT_FILTER, upfirdn2d


def conv2d_resample(x, w, *, up: int = 1, down: int = 1, padding: int = 0, f=DEFAULT_FILTER, impl=None):
    """x [B, H, W, Cin]; w [kh, kw, Cin, Cout] or per sample [B, kh, kw, Cin, Cout]."""
    if up > 1 and down > 1:
        raise ValueError("conv2d_resample: up and down together are not supported")
    kh, kw = w.shape[-4], w.shape[-3]
    fw = len(f)
    px0 = px1 = py0 = py1 = padding
    if up > 1:
        px0, py0 = px0 + (fw + up - 1) // 2, py0 + (fw + up - 1) // 2
        px1, py1 = px1 + (fw - up) // 2, py1 + (fw - up) // 2
    if down > 1:
        px0, py0 = px0 + (fw - down + 1) // 2, py0 + (fw - down + 1) // 2
        px1, py1 = px1 + (fw - down) // 2, py1 + (fw - down) // 2

    if kh == kw == 1 and down > 1:
        x = upfirdn2d(x, f, down=down, padding=(px0, px1, py0, py1))
        return conv2d(x, w, impl=impl)
    if kh == kw == 1 and up > 1:
        x = conv2d(x, w, impl=impl)
        return upfirdn2d(x, f, up=up, padding=(px0, px1, py0, py1), gain=up ** 2)
    if down > 1:
        x = upfirdn2d(x, f, padding=(px0, px1, py0, py1))
        return conv2d(x, w, stride=down, impl=impl)
    if up > 1:
        px0, px1 = px0 - (kw - 1), px1 - (kw - up)
        py0, py1 = py0 - (kh - 1), py1 - (kh - up)
        pxt, pyt = max(min(-px0, -px1), 0), max(min(-py0, -py1), 0)
        x = conv2d_transpose(x, w, stride=up, impl=impl)
        if pxt or pyt:  # torch's transposed-conv padding crops the output
            x = x[:, pyt:x.shape[1] - pyt, pxt:x.shape[2] - pxt, :]
        return upfirdn2d(x, f, padding=(px0 + pxt, px1 + pxt, py0 + pyt, py1 + pyt), gain=up ** 2)
    return conv2d(x, w, padding=padding, impl=impl)
