"""Collective communication of a compiled XLA program, read from its HLO text.

For each collective instruction we record its kind, result shape, group size and the bytes one device
sends under the ring algorithm (n = devices in its replica group, N = full buffer bytes):
  all-reduce          2 (n-1)/n N       (reduce-scatter + all-gather)
  all-gather          (n-1)/n N         (N = gathered result)
  reduce-scatter      (n-1)/n N         (N = unscattered input = n x result)
  all-to-all          (n-1)/n N
  collective-permute  N                 (each device sends its buffer once)
The XLA CPU backend writes a reduce-scatter as an all-reduce whose only user is a dynamic slice of 1/n of
it; such pairs are counted as reduce-scatters (flag `from_all_reduce`), which is what GPU and TPU compile.
Limits: an instruction inside a while loop body is counted once per program, not per trip (the ganjax
steps have no loops around collectives; `in_loop` marks any that do); async `-start`/`-done` pairs count
once, and so do the instructions that share one channel_id (the TPU compiler writes one asynchronous
all-gather as a chain of `async_collective_fusion` computations, each holding a copy of it).
"""

import dataclasses
import re

DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4,
               "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16, "f8e4m3fn": 1, "f8e5m2": 1}
KINDS = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")

_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.+?)\s+([a-z][\w\-]*)\((.*)$")
_ARRAY = re.compile(r"\b([a-z]\w*)\[([\d,]*)\]")
_COMP = re.compile(r"^\s*(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")


@dataclasses.dataclass
class Collective:
    kind: str
    name: str
    shape: str
    result_bytes: int
    group_size: int
    ring_bytes: float  # bytes sent per device under the ring algorithm
    computation: str
    in_loop: bool = False
    from_all_reduce: bool = False


def _array_bytes(shape_text: str) -> list[int]:
    out = []
    for dtype, dims in _ARRAY.findall(shape_text):
        if dtype not in DTYPE_BYTES:
            continue
        n = 1
        for d in filter(None, dims.split(",")):
            n *= int(d)
        out.append(n * DTYPE_BYTES[dtype])
    return out


def group_size(attrs: str, num_devices: int) -> int:
    """Devices per replica group, from any of XLA's three spellings (or all devices if empty)."""
    m = re.search(r"replica_groups=mesh\[([^\]]*)\][^{]*\{([^}]*)\}", attrs)
    if m:
        sizes = {k: int(v) for k, v in re.findall(r"'([^']+)'=(\d+)", m.group(1))}
        n = 1
        for axis in re.findall(r"'([^']+)'", m.group(2)):
            n *= sizes[axis]
        return n
    m = re.search(r"replica_groups=\[([\d,]+)\]<=", attrs)
    if m:
        return int(m.group(1).split(",")[-1])
    m = re.search(r"replica_groups=\{\{([\d,\s]*)\}", attrs)
    if m:
        return len([t for t in m.group(1).split(",") if t.strip()])
    return num_devices


def ring_bytes(kind: str, result_bytes: int, n: int) -> float:
    if n <= 1:
        return 0.0
    frac = (n - 1) / n
    if kind == "all-reduce":
        return 2 * frac * result_bytes
    if kind == "reduce-scatter":
        return frac * result_bytes * n
    if kind in ("all-gather", "all-to-all"):
        return frac * result_bytes
    return float(result_bytes)  # collective-permute


def parse(hlo_text: str, num_devices: int | None = None) -> list[Collective]:
    if num_devices is None:
        m = re.search(r"num_partitions=(\d+)", hlo_text)
        r = re.search(r"replica_count=(\d+)", hlo_text)
        num_devices = (int(m.group(1)) if m else 1) * (int(r.group(1)) if r else 1)
    lines = hlo_text.splitlines()
    loop_bodies = set(re.findall(r"body=%?([\w.\-]+)", hlo_text))
    users: dict[str, list[tuple[str, str, str]]] = {}  # operand -> [(user name, user shape, user op)]
    found, comp, channels = [], "", set()
    for line in lines:
        cm = _COMP.match(line)
        if cm and "=" not in line.split("{")[0]:
            comp = cm.group(1)
            continue
        im = _INSTR.match(line)
        if not im:
            continue
        name, shape, op, rest = im.groups()
        for operand in re.findall(r"%([\w.\-]+)", rest.split(")")[0]):
            users.setdefault(operand, []).append((name, shape, op))
        base = op[:-6] if op.endswith("-start") else op
        if base not in KINDS or op.endswith("-done"):
            continue
        sizes = _array_bytes(shape)
        if op.endswith("-start") and len(sizes) > 1:
            # async tuples hold (operand, result[, contexts]): the gathered/permuted buffer is the largest
            nbytes = max(sizes) if base in ("all-gather", "collective-permute") else sum(sizes) // 2
        else:
            nbytes = sum(sizes)
        channel = re.search(r"channel_id=(\d+)", rest)
        if channel:  # the TPU compiler splits one async collective into several fusions sharing its channel
            if (base, channel.group(1)) in channels:
                continue
            channels.add((base, channel.group(1)))
        n = group_size(rest, num_devices)
        found.append(Collective(base, name, shape, nbytes, n, ring_bytes(base, nbytes, n), comp,
                                in_loop=comp in loop_bodies))
    for c in found:
        if c.kind != "all-reduce" or c.group_size <= 1:
            continue
        us = users.get(c.name, [])
        if len(us) == 1 and ("dynamic-slice" in us[0][0] or us[0][2] == "dynamic-slice"):
            sliced = sum(_array_bytes(us[0][1]))
            if sliced * c.group_size == c.result_bytes:
                c.kind, c.from_all_reduce = "reduce-scatter", True
                c.result_bytes = sliced
                c.ring_bytes = ring_bytes("reduce-scatter", sliced, c.group_size)
    return found


def summarize(collectives: list[Collective]) -> dict:
    """Totals per kind: count, result bytes and ring bytes sent per device, and the result bytes per
    replica-group size (a gradient all-reduce spans the whole batch axis; minibatch-std's span a group)."""
    out = {"total_ring_bytes": 0.0, "count": len(collectives), "by_kind": {}}
    for c in collectives:
        k = out["by_kind"].setdefault(c.kind, {"count": 0, "result_bytes": 0, "ring_bytes": 0.0,
                                               "result_bytes_by_group_size": {}})
        k["count"] += 1
        k["result_bytes"] += c.result_bytes
        k["ring_bytes"] += c.ring_bytes
        groups = k["result_bytes_by_group_size"]
        groups[c.group_size] = groups.get(c.group_size, 0) + c.result_bytes
        out["total_ring_bytes"] += c.ring_bytes
    return out


def compiled_comm(compiled, num_devices: int | None = None) -> dict:
    """summarize(parse(...)) of a jax Compiled object, plus the per-instruction list."""
    cs = parse(compiled.as_text(), num_devices)
    s = summarize(cs)
    s["collectives"] = [dataclasses.asdict(c) for c in cs]
    return s
