"""Weak-scaling estimate: step time and efficiency at device counts the user does not have.

Model (written out in the report with every number it uses):
- Weak scaling: the per-device batch stays fixed, so per-device compute time t_c stays fixed. t_c is
  measured when the bench ran on the target device type; otherwise t_c = per-device FLOPs / (peak x MFU),
  with the MFU an explicit assumption (`assume_mfu`).
- Communication: each collective the compiled steps issue (read from the HLO at the benched device count
  n0, weighted by how often its phase runs in an amortised iteration) keeps its full buffer size N as n
  grows (gradients and parameters do not grow with the batch); only the ring fraction changes.
  Hierarchical algorithms (NCCL across 8-GPU NVLink nodes; TPU ICI within a slice, DCN between slices):
  with g = min(n, node) devices per fast domain and m = n/g domains,
    all-reduce          2 [ (g-1)/g N / B_fast + (m-1)/m (N/g) / B_slow ]
    all-gather, reduce-scatter   (g-1)/g N / B_fast + (m-1)/m (N/g) / B_slow
    all-to-all          (g-1)/n N / B_fast + (n-g)/n N / B_slow
    collective-permute  N / B_fast (neighbours)
  plus a latency of alpha x 2 log2(n) per collective.
- Step time without overlap t_c + t_comm (an upper bound) and with perfect overlap max(t_c, t_comm);
  weak-scaling efficiency = t_c / step time.
Limits: fsdp at large n keeps every tensor sharded that was sharded at n0 (ganjax's rules replicate a
dimension that n does not divide); the latency term is optimistic for plain rings; stragglers, input
pipelines and host overheads are not modelled.
"""

import dataclasses
import math

from ganjax import hardware

DEVICE_COUNTS = (8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)

@dataclasses.dataclass(frozen=True)
class CommOp:
    kind: str
    buffer_bytes: float  # N: the full (unsharded) buffer the collective moves
    weight: float  # times per amortised iteration


def comm_ops_from_hlo(collectives: list[dict], weight: float) -> list[CommOp]:
    """CommOps from hlo_comm records of one compiled phase that runs `weight` times per iteration."""
    out = []
    for c in collectives:
        n = c["group_size"]
        if n <= 1:
            continue
        full = c["result_bytes"] * (n if c["kind"] == "reduce-scatter" else 1)
        out.append(CommOp(c["kind"], float(full), weight))
    return out


def _bandwidths(device_key: str, n: int):
    p = hardware.lookup(device_key)
    fast, node, slow = p.link_bytes_per_s, p.node_size, p.inter_node_bytes_per_s
    g = min(n, node)
    return fast, slow, g, max(n // g, 1), p.collective_latency_s


def collective_time(op: CommOp, n: int, device_key: str) -> float:
    if n <= 1:
        return 0.0
    fast, slow, g, m, alpha = _bandwidths(device_key, n)
    big = op.buffer_bytes
    intra = (g - 1) / g * big / fast
    inter = (m - 1) / m * (big / g) / slow
    if op.kind == "all-reduce":
        t = 2 * (intra + inter)
    elif op.kind in ("all-gather", "reduce-scatter"):
        t = intra + inter
    elif op.kind == "all-to-all":
        t = (g - 1) / n * big / fast + (n - g) / n * big / slow
    else:
        t = big / fast
    return t + alpha * 2 * math.log2(n)


def estimate(ops: list[CommOp], compute_s: float, device_key: str, counts=DEVICE_COUNTS) -> list[dict]:
    """Per device count: communication time, step time (no overlap / perfect overlap), efficiency."""
    rows = []
    for n in counts:
        t_comm = sum(op.weight * collective_time(op, n, device_key) for op in ops)
        ring = sum(op.weight * _ring_bytes(op, n) for op in ops)
        serial, overlap = compute_s + t_comm, max(compute_s, t_comm)
        rows.append({"devices": n, "compute_s": compute_s, "comm_s": t_comm, "comm_bytes_per_device": ring,
                     "step_s_no_overlap": serial, "step_s_overlap": overlap,
                     "efficiency_no_overlap": compute_s / serial if serial else 1.0,
                     "efficiency_overlap": compute_s / overlap if overlap else 1.0})
    return rows


def _ring_bytes(op: CommOp, n: int) -> float:
    frac = (n - 1) / n
    return op.buffer_bytes * {"all-reduce": 2 * frac, "collective-permute": 1.0}.get(op.kind, frac)


def analytic_ops(strategy: str, g_params: int, d_params: int, phases, param_bytes: int = 4) -> list[CommOp]:
    """Collectives of one amortised iteration when no compiled HLO is at hand (dp or fsdp, fp32 grads), from
    the recipe's phases (ganjax/train/recipe.py), each weighted by how often it runs.

    dp:   one all-reduce of the gradients of the network a phase updates.
    fsdp: per phase, an all-gather of every network it evaluates and a reduce-scatter of the gradients of
          the network it updates.
    """
    size = {"G": float(g_params * param_bytes), "D": float(d_params * param_bytes)}
    ops = []
    for p in phases:
        if p.rate <= 0:
            continue
        grad = size[p.spec.net]
        if strategy == "dp":
            ops.append(CommOp("all-reduce", grad, p.rate))
        elif strategy == "fsdp":
            ops += [CommOp("all-gather", size[net], p.rate) for net in p.spec.evaluates]
            ops.append(CommOp("reduce-scatter", grad, p.rate))
        else:
            raise ValueError(f"scaling strategy {strategy!r}: expected dp or fsdp")
    return ops


def markdown(title: str, rows_by_strategy: dict[str, list[dict]], assumptions: list[str]) -> str:
    lines = [f"# {title}", "", "## Assumptions", ""] + [f"- {a}" for a in assumptions] + [""]
    for strategy, rows in rows_by_strategy.items():
        lines += [f"## {strategy}", "",
                  "| devices | compute s | comm s | comm MB/device | step s (no overlap) | step s (overlap) "
                  "| efficiency (no overlap) | efficiency (overlap) |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['devices']} | {r['compute_s']:.4g} | {r['comm_s']:.4g} | "
                         f"{r['comm_bytes_per_device'] / 1e6:.1f} | {r['step_s_no_overlap']:.4g} | "
                         f"{r['step_s_overlap']:.4g} | {100 * r['efficiency_no_overlap']:.1f}% | "
                         f"{100 * r['efficiency_overlap']:.1f}% |")
        lines.append("")
    return "\n".join(lines)
