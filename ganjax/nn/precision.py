"""Mixed precision for contractions: 16-bit operands, float32 accumulation, one rounding per result.

With `compute_dtype = "bfloat16"` the models' dense layers and the convolutions in their matmul form go
through `einsum` here (the FIR resampling matrices run in float32, see ganjax.nn.resample). Its result is
summed in float32 and rounded to bfloat16 once, and its custom VJP makes the gradient contractions (and, for R1, their own
gradients) take the same path. Plain autodiff would not: the transpose of a dot with a float32
`preferred_element_type` is a dot of a float32 cotangent with a bfloat16 operand, which XLA runs in float32.

Why it matters on CPU: a bf16 dot with float32 output runs on the hardware's bf16 dot-product instructions,
about twice a float32 dot, while one with bf16 output is slower than float32; a whole bf16 training step is
still not faster than float32 there, because XLA:CPU computes bf16 elementwise ops through float32 converts
(numbers: docs/measurements.md). On GPU and TPU the vendors' kernels accumulate 16-bit
products in float32 anyway; there this only fixes where the result is rounded.
"""

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

from ganjax.nn import backend


def is_mixed(dtype) -> bool:
    """Whether contractions of this dtype multiply in it and accumulate in float32."""
    return jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def einsum(spec: str, a, b, *, float32_result: bool = False):
    """jnp.einsum of two operands; 16-bit `a` gets float32 accumulation and the custom VJP (b is cast to a's
    dtype). Every index of one operand must appear in the other operand or in the output.

    float32_result: keep the float32 sum instead of rounding it to a's dtype (for a small result that feeds
    a softmax, such as attention logits); the gradient contractions still run in a's dtype."""
    if not is_mixed(a.dtype):
        return jnp.einsum(spec, a, b.astype(a.dtype))
    ins, out = spec.replace(" ", "").split("->")
    sa, sb = ins.split(",")
    if "..." in sa:  # name the leading dims of a; b and the output must use the same ellipsis
        names = "".join(c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ" if c not in spec)[:a.ndim - len(sa) + 3]
        sa, sb, out = (t.replace("...", names) for t in (sa, sb, out))
    if len(set(sa)) != len(sa) or len(set(sb)) != len(sb) or "." in sb + out:
        raise ValueError(f"precision.einsum {spec!r}: repeated indices or an ellipsis outside the first operand")
    for own, other in ((sa, sb), (sb, sa)):
        if set(own) - set(other + out):
            raise ValueError(f"precision.einsum {spec!r}: an operand sums over an index of its own; "
                             "write that reduction separately")
    return _mixed_einsum(f"{sa},{sb}->{out}", bool(float32_result), a, b.astype(a.dtype))


def _contract32(spec, a, b):
    """einsum with a float32 result. On CPU as one [batch, M, K] x [batch, K, N] dot of operands materialised
    in that order: XLA:CPU (jaxlib 0.10.2) runs a bf16 x bf16 -> f32 dot only when its YNNPACK fusion takes
    it, and when layout assignment folds a transpose into the dot it falls back to a thunk that fails at run
    time ("Unsupported element type for DotThunk::Execute: BF16 x BF16 = F32"); for example the FIR
    gradient einsum "azcd,zb->abcd" did. The optimization barriers keep the transposes out of the dot."""
    if backend.platform() != "cpu":
        return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32)
    ins, out = spec.split("->")
    sa, sb = ins.split(",")
    batch = [c for c in sa if c in sb and c in out]
    contracted = [c for c in sa if c in sb and c not in out]
    a_free, b_free = [c for c in sa if c not in sb], [c for c in sb if c not in sa]
    size = {**dict(zip(sa, a.shape)), **dict(zip(sb, b.shape))}

    def prod(idx):
        return math.prod(size[c] for c in idx)

    a3 = a.transpose([sa.index(c) for c in batch + a_free + contracted])
    b3 = b.transpose([sb.index(c) for c in batch + contracted + b_free])
    a3, b3 = lax.optimization_barrier((a3.reshape(prod(batch), prod(a_free), prod(contracted)),
                                       b3.reshape(prod(batch), prod(contracted), prod(b_free))))
    y = lax.optimization_barrier(lax.dot_general(a3, b3, (((2,), (1,)), ((0,), (0,))),
                                                 preferred_element_type=jnp.float32))
    order = batch + a_free + b_free
    return y.reshape([size[c] for c in order]).transpose([order.index(c) for c in out])


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _mixed_einsum(spec, float32_result, a, b):
    y = _contract32(spec, a, b)
    return y if float32_result else y.astype(a.dtype)


def _mixed_einsum_fwd(spec, float32_result, a, b):
    return _mixed_einsum(spec, float32_result, a, b), (a, b)


def _mixed_einsum_bwd(spec, float32_result, res, g):
    a, b = res
    ins, out = spec.split("->")
    sa, sb = ins.split(",")
    g = g.astype(a.dtype)
    return _mixed_einsum(f"{out},{sb}->{sa}", False, g, b), _mixed_einsum(f"{sa},{out}->{sb}", False, a, g)


_mixed_einsum.defvjp(_mixed_einsum_fwd, _mixed_einsum_bwd)
