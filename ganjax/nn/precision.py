"""Mixed precision for contractions: 16-bit operands, float32 accumulation, one rounding per result.

With `compute_dtype = "bfloat16"` every matmul-like op of the models (dense layers, convolutions in their
matmul form, the FIR resampling matrices) goes through `einsum` here. Its result is summed in float32 and
rounded to bfloat16 once, and its custom VJP makes the gradient contractions (and, for R1, their own
gradients) take the same path. Plain autodiff would not: the transpose of a dot with a float32
`preferred_element_type` is a dot of a float32 cotangent with a bfloat16 operand, which XLA runs in float32.

Why it matters on CPU (jax 0.10.2, this project's 2-core AVX512-BF16 machine, 2048^3): a bf16 x bf16 dot
with bf16 output ran at 178 GFLOP/s, one with float32 output (the hardware's bf16 dot-product
instructions) at 372-385 GFLOP/s, a float32 dot at 205. On GPU and TPU the vendors' kernels accumulate 16-bit
products in float32 anyway; there this only fixes where the result is rounded.
"""

import functools

import jax
import jax.numpy as jnp


def is_mixed(dtype) -> bool:
    """Whether contractions of this dtype multiply in it and accumulate in float32."""
    return jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def einsum(spec: str, a, b):
    """jnp.einsum of two operands; 16-bit `a` gets float32 accumulation and the custom VJP (b is cast to a's
    dtype). Every index of one operand must appear in the other operand or in the output."""
    if not is_mixed(a.dtype):
        return jnp.einsum(spec, a, b.astype(a.dtype))
    ins, out = spec.replace(" ", "").split("->")
    sa, sb = ins.split(",")
    for own, other in ((sa, sb), (sb, sa)):
        if set(own.replace(".", "")) - set(other + out):
            raise ValueError(f"precision.einsum {spec!r}: an operand sums over an index of its own; "
                             "write that reduction separately")
    return _mixed_einsum(f"{sa},{sb}->{out}", a, b.astype(a.dtype))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _mixed_einsum(spec, a, b):
    return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32).astype(a.dtype)


def _mixed_einsum_fwd(spec, a, b):
    return _mixed_einsum(spec, a, b), (a, b)


def _mixed_einsum_bwd(spec, res, g):
    a, b = res
    ins, out = spec.split("->")
    sa, sb = ins.split(",")
    g = g.astype(a.dtype)
    return _mixed_einsum(f"{out},{sb}->{sa}", g, b), _mixed_einsum(f"{sa},{out}->{sb}", a, g)


_mixed_einsum.defvjp(_mixed_einsum_fwd, _mixed_einsum_bwd)
