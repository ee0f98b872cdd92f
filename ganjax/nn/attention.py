"""Bipartite attention between a set of 'from' elements (image positions, or latents) and 'to' elements.

Notation: x [B, F, C] from-elements, y [B, T, Cy] to-elements, N heads of size S = dim / N.
Kinds (see SPEC-gansformer.md section 4):
- 'simplex': logits = (x Wq + Px)(y Wk + Py)^T / sqrt(S); softmax over T; control = A (y Wv).
- 'official': the released models' k-means path (parametric, `kmeans_iters` >= 1):
      E = concat[x Wq, Px] split into heads ([B, N, F, 2S]); C0 = learned centroids [1, N, T, 2S];
      logits = (E * att_weight) C^T / sqrt(S); for iterations > 0, C = normalise_F(A)^T E.
  Keys (y Wk + Py) are computed (their params exist, as in the reference) but never reach the output.
- 'duplex': the latents first attend to the image (bottom-up): keys K' = softmax_F((y Wk + Py)(x Wk' + Px)^T)
  (x Wv'); the image then attends to K' + Py with values y Wv; the latents are updated y + (K' Wu) and the
  update is returned so the caller can carry it to the next layer.
Integration of control into x (norm='layer': statistics over channels per element):
  'mul': norm(x) * (1 + c Wm + bm);  'add': norm(x) + c Wm + bm;  'both': norm(x) * (1 + gamma) + beta.
Attention dropout (train only): rate/2 elementwise plus rate/2 on whole 'to' columns.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ganjax.nn import backend, precision
from ganjax.nn.layers import Dense, DenseWeights, boxed_param, constant

KINDS = ("simplex", "official", "duplex")
INTEGRATIONS = ("mul", "add", "both")


def split_heads(t, heads):
    """[B, L, N*S] -> [B, N, L, S]."""
    b, n = t.shape[0], t.shape[1]
    return t.reshape(b, n, heads, t.shape[-1] // heads).transpose(0, 2, 1, 3)


def merge_heads(t):
    """[B, N, L, S] -> [B, L, N*S]."""
    b, h, n, s = t.shape
    return t.transpose(0, 2, 1, 3).reshape(b, n, h * s)


def att_norm(x, integration: str, eps: float = 1e-8):
    """Channel-wise (per element) centring for add/both and RMS normalisation for mul/both."""
    x = x.astype(jnp.float32)
    if integration in ("add", "both"):
        x = x - jnp.mean(x, axis=-1, keepdims=True)
    if integration in ("mul", "both"):
        x = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + eps)
    return x


def assignments(probs, eps: float = 1e-8):
    """Normalise attention over the from-elements: [B, N, F, T] -> [B, N, T, F]."""
    return jnp.swapaxes(probs / (jnp.sum(probs, axis=-2, keepdims=True) + eps), -1, -2)


class BipartiteAttention(nn.Module):
    dim: int  # attention width = channels of x (integration modulates x's channels)
    heads: int = 1
    kind: str = "simplex"
    integration: str = "add"
    norm: bool = False  # layer-normalise x before integration ('layer' in the reference)
    dropout: float = 0.0
    kmeans_iters: int = 1
    from_axis: str | None = "embed"  # logical name of x's channel dim
    to_axis: str | None = "embed"  # logical name of y's channel dim
    dtype: Any = jnp.float32

    def _dense(self, name, features, in_axis, out_axis="heads"):
        return Dense(features, axes=(in_axis, out_axis), dtype=self.dtype, name=name)

    def _softmax_dropout(self, logits, train):
        probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
        if train and self.dropout > 0:
            rate = self.dropout / 2
            # One uniform draw for both masks (one RNG op compiles faster than two): rows [:F] drop cells,
            # the extra row drops whole 'to' columns.
            shape = probs.shape[:-2] + (probs.shape[-2] + 1, probs.shape[-1])
            u = jax.random.uniform(self.make_rng("dropout"), shape)
            keep = (u[..., :-1, :] >= rate) & (u[..., -1:, :] >= rate)
            probs = jnp.where(keep, probs / (1.0 - rate) ** 2, 0.0)
        return probs

    @nn.compact
    def __call__(self, x, y, x_pos=None, y_pos=None, *, train: bool = False):
        """x [B, F, C], y [B, T, Cy], x_pos [F, P] | None, y_pos [T, P] | None.

        Returns (new x [B, F, C] in the compute dtype, probs [B, N, F, T], latent update [B, T, Cy] or None).
        """
        if self.kind not in KINDS:
            raise ValueError(f"attention kind {self.kind!r} is not one of {KINDS}")
        if self.dim % self.heads:
            raise ValueError(f"attention: heads={self.heads} does not divide the width {self.dim}")
        b, f, t = x.shape[0], x.shape[1], y.shape[1]
        n, s = self.heads, self.dim // self.heads
        scale = 1.0 / np.sqrt(s)
        cast = lambda a: a.astype(self.dtype)  # noqa: E731
        x, y = cast(x), cast(y)

        wq, bq = DenseWeights(self.dim, axes=(self.from_axis, "heads"), name="to_queries")(x.shape[-1])
        k_plain = self._dense("to_keys", self.dim, self.to_axis)(y)  # [B, T, D]
        values = self._dense("to_values", self.dim, self.to_axis)(y)
        px = self._dense("from_pos_map", self.dim, "embed")(cast(x_pos))[None] if x_pos is not None else None
        py = self._dense("to_pos_map", self.dim, "embed")(cast(y_pos))[None] if y_pos is not None else None
        keys = k_plain if py is None else k_plain + py

        def plain_queries():  # x Wq + bq [B, F, D], as the Dense layer "to_queries" computes it
            return precision.einsum("...i,io->...o", x, wq.astype(self.dtype)) + bq.astype(self.dtype)

        def queries():
            q = plain_queries()
            return q if px is None else q + px

        update = None
        if self.kind == "official":
            if px is None:
                raise ValueError("official attention needs grid positions (x_pos)")
            att_weight = boxed_param(self, "att_weight", constant(1.0), (n, 1, 2 * s), (None, None, None))
            centroids = boxed_param(self, "centroids", jax.nn.initializers.normal(1.0), (1, n, t, 2 * s),
                                    (None, None, "latents", None))
            # The reference splits E = concat[Q, P] ([B, F, 2D]) into heads of 2S. E is never built here:
            # each head's centroids are scattered into that head's 2S columns of a zero [.., N, T, 2D] tensor
            # (masked), and the contraction is split into its Q half (batched) and its P half (P has no batch
            # axis, so it is one small matmul whose gradient needs no reduction over a broadcast batch).
            # With one iteration the queries are folded into the centroids: (x Wq + bq) C^T = x (Wq C^T) + bq C^T,
            # a [C, N, T] matrix (T << D), so the [B, F, D] queries are never formed (in FLOPs and in memory
            # traffic the largest part of the layer after its convolution). Logits are kept in float32.
            mask = jnp.asarray(np.kron(np.eye(n, dtype=np.float32), np.ones((1, 2 * s), np.float32)))  # [N, 2D]
            p32 = px[0].astype(jnp.float32)

            def spread(cents):  # [.., N, T, 2S] -> [.., N, T, 2D], zero outside each head's columns
                full = jnp.tile(cents, (1,) * (cents.ndim - 1) + (n,))
                return full * mask[:, None, :]

            weight = spread(att_weight * centroids[0] * scale)  # [N, T, 2D]
            wc = weight[..., :self.dim]
            pos_logits = jnp.einsum("fc,ntc->nft", p32, weight[..., self.dim:])
            if self.kmeans_iters == 1:
                wqc = jnp.einsum("cd,ntd->cnt", wq, wc)
                if backend.platform() == "tpu":
                    # Positions-major, [F, B, C] x [C, N*T]: the convolutions' layout on TPU, so x's gradient
                    # from here needs no transposing copy (on CPU the swap would be one).
                    logits = precision.einsum("fbc,cnt->fbnt", jnp.swapaxes(x, 0, 1), wqc, float32_result=True)
                    logits = logits.transpose(1, 2, 0, 3)
                else:
                    logits = precision.einsum("bfc,cnt->bnft", x, wqc, float32_result=True)
                logits = logits + (pos_logits + jnp.einsum("c,ntc->nt", bq, wc)[:, None])
            else:
                q32 = plain_queries().astype(jnp.float32)
                logits = jnp.einsum("bfc,ntc->bnft", q32, wc) + pos_logits
            probs = self._softmax_dropout(logits, train)
            for _ in range(1, self.kmeans_iters):
                a = assignments(probs)  # [B, N, T, F]
                cents = jnp.concatenate([jnp.einsum("bntf,bfc->bntc", a, q32),
                                         jnp.einsum("bntf,fc->bntc", a, p32)], axis=-1)  # [B, N, T, 2D]
                weight = cents * mask[:, None, :] * spread(att_weight * scale)
                logits = (jnp.einsum("bfc,bntc->bnft", q32, weight[..., :self.dim])
                          + jnp.einsum("fc,bntc->bnft", p32, weight[..., self.dim:]))
                probs = self._softmax_dropout(logits, train)
        elif self.kind == "simplex":
            logits = precision.einsum("bnfd,bntd->bnft", split_heads(queries(), n), split_heads(keys, n),
                                      float32_result=True) * scale
            probs = self._softmax_dropout(logits, train)
        else:  # duplex: the latents first gather from the image (bottom-up); what they gather are the keys
            img_keys = self._dense("img_keys", self.dim, self.from_axis)(x)
            if px is not None:
                img_keys = img_keys + px
            img_values = self._dense("img_values", self.dim, self.from_axis)(x)
            bu_logits = jnp.einsum("bntd,bnfd->bntf", split_heads(keys, n).astype(jnp.float32),
                                   split_heads(img_keys, n).astype(jnp.float32)) * scale
            bu_probs = self._softmax_dropout(bu_logits, train)  # each latent's distribution over positions
            gathered = merge_heads(jnp.einsum("bntf,bnfd->bntd", bu_probs,
                                              split_heads(img_values, n).astype(jnp.float32)))  # [B, T, D]
            new_keys = gathered if py is None else gathered + py.astype(jnp.float32)
            logits = jnp.einsum("bnfd,bntd->bnft", split_heads(queries(), n).astype(jnp.float32),
                                split_heads(new_keys, n)) * scale
            probs = self._softmax_dropout(logits, train)
            update = Dense(y.shape[-1], axes=("heads", self.to_axis), dtype=self.dtype, name="ltnt_update")(
                gathered.astype(self.dtype)).astype(jnp.float32)

        # control = A V [B, F, D] only feeds the modulation layer: (A V) Wm = A (V Wm), where V Wm is
        # [B, N, T, width] (T << F), so the [B, F, D] control is never formed.
        width = 2 * self.dim if self.integration == "both" else self.dim
        wm, bm = DenseWeights(width, axes=("heads", self.from_axis), name="modulation")(self.dim)
        vw = jnp.einsum("bnts,nso->bnto", split_heads(values, n).astype(jnp.float32), wm.reshape(n, s, width))
        # Integration in the compute dtype (the norm's statistics in float32): with bfloat16 the [B, F, C]
        # values and their gradients stay 16-bit, where float32 ones were written to HBM and read back.
        ctrl = precision.einsum("bnft,bnto->bfo", probs.astype(self.dtype), vw) + bm.astype(self.dtype)
        out = att_norm(x, self.integration).astype(self.dtype) if self.norm else x
        if self.integration == "both":
            gain, bias = jnp.split(ctrl, 2, axis=-1)
        else:
            gain = bias = ctrl
        if self.integration != "add":
            out = out * (gain + 1)
        if self.integration != "mul":
            out = out + bias
        return out, probs, update
