"""What the compiler says about one compiled program: its memory per device, its FLOPs and bytes
accessed per device (XLA's cost analysis), and its collective communication (hlo_comm). The same reading
serves `ganjax bench` (programs it then runs) and `ganjax plan` (TPU programs compiled on a CPU host)."""

import math

from ganjax.bench import hlo_comm


def memory(compiled) -> dict:
    """Bytes per device: arguments, outputs, their aliased (donated) part, temporaries, generated code;
    `peak_bytes` = arguments + outputs - aliased + temporaries (the data live at once), and `hbm_bytes`
    adds the generated code (which a TPU keeps in HBM too)."""
    m = compiled.memory_analysis()
    if m is None:
        return {}
    peak = m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes
    code = int(getattr(m, "generated_code_size_in_bytes", 0))
    return {"argument_bytes": int(m.argument_size_in_bytes), "output_bytes": int(m.output_size_in_bytes),
            "alias_bytes": int(m.alias_size_in_bytes), "temp_bytes": int(m.temp_size_in_bytes),
            "code_bytes": code, "peak_bytes": int(peak), "hbm_bytes": int(peak) + code}


def cost(compiled) -> dict:
    """XLA's cost analysis per device: flops, bytes accessed and (where the backend models it, as the TPU
    compiler does) optimal_seconds; NaN where the backend gives nothing."""
    ca = compiled.cost_analysis() or {}
    if isinstance(ca, list):  # older jax: one dict per program
        ca = ca[0] if ca else {}
    opt = float(ca.get("optimal_seconds", math.nan))
    return {"flops": float(ca.get("flops", math.nan)), "bytes_accessed": float(ca.get("bytes accessed", math.nan)),
            "optimal_seconds": opt if opt >= 0 else math.nan}  # the TPU compiler reports -1-ish when unknown


def stats(compiled, num_devices: int) -> tuple[dict, list[dict]]:
    """(memory + cost + communication (ring bytes sent per device, by kind), the collective instructions
    one by one (hlo_comm records)) of one compiled program."""
    comm = hlo_comm.compiled_comm(compiled, num_devices)
    return ({"memory": memory(compiled), **cost(compiled), "comm_bytes_per_device": comm["total_ring_bytes"],
             "comm": comm["by_kind"], "collectives": comm["count"]}, comm["collectives"])
