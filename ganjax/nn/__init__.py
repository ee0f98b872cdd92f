"""Building blocks in plain JAX / Flax linen: equalized-lr layers, the conv primitive, FIR resampling,
modulated conv, minibatch-std, grid position encodings and bipartite attention."""

from ganjax.nn.attention import BipartiteAttention
from ganjax.nn.conv import conv2d, conv2d_transpose, default_impl
from ganjax.nn.conv_resample import conv2d_resample
from ganjax.nn.layers import Conv2d, Dense, bias_act, boxed_param
from ganjax.nn.mbstd import minibatch_std
from ganjax.nn.modconv import modulated_conv2d
from ganjax.nn.position import sinusoidal_grid
from ganjax.nn.resample import downsample2d, setup_filter, upfirdn2d, upsample2d
