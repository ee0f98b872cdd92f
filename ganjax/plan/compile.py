"""The training programs of one config on one TPU slice, compiled by the TPU compiler on this host.

The state, the mesh, the step variants and the phase programs are the trainer's own
(ganjax.train.setup.build over the slice's abstract devices, ganjax.train.programs), traced for the TPU
(ganjax.nn.backend) so the models take their TPU forms (XLA's convolutions, the FIR taps). Nothing is
allocated: the state is abstract (ShapeDtypeStructs with the trainer's shardings).

A program that does not fit is not an exception here: the TPU compiler refuses it with RESOURCE_EXHAUSTED
and its own numbers ("the total memory required ... (47.68G) exceeds available HBM (15.75G)"), which are
recorded as the program's memory verdict.
"""

import dataclasses
import functools
import hashlib
import importlib.metadata
import json
import os
import re
import time

import jax
import jax.numpy as jnp
import jaxlib

from ganjax import hardware, parallel
from ganjax.bench import compiled as compiled_lib
from ganjax.bench.sweep import apply_mesh, parse_mesh
from ganjax.config import validate
from ganjax.plan import roofline, tpu
from ganjax.train import programs, setup

STRATEGY_MESHES = {  # the default mesh of each strategy on n chips (fsdp_tp: tensor parallel over 2)
    "dp": lambda n: {"data": n, "fsdp": 1, "model": 1},
    "fsdp": lambda n: {"data": 1, "fsdp": n, "model": 1},
    "fsdp_tp": lambda n: {"data": 1, "fsdp": max(n // 2, 1), "model": 2 if n > 1 else 1},
    "shard_map": lambda n: {"data": n, "fsdp": 1, "model": 1},
}
# The TPU compiler's two forms of refusal: "...required for HLO temporaries (103.03G) exceeds available HBM
# (95.74G)" and "CompileTimeHbmOom: ... Used 15.88G of 15.75G hbm" (seen on v5e).
_OOM = (re.compile(r"\(([\d.]+)([KMGT])\) exceeds available HBM \(([\d.]+)([KMGT])\)"),
        re.compile(r"Used ([\d.]+)([KMGT]) of ([\d.]+)([KMGT]) hbm"))
_UNITS = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


class PlanError(ValueError):
    """A plan's inputs do not fit together (mesh vs slice, batch vs mesh); nothing was compiled."""


def configure(config, slice_name: str, *, strategy: str | None = None, mesh: str | None = None,
              batch: int | None = None, batch_per_chip: int | None = None):
    """A copy of `config` laid out on the slice: the mesh from `mesh` ('dp=4,fsdp=2'), else from `strategy`
    (STRATEGY_MESHES), else the config's own parallel section; the global batch from `batch` or
    `batch_per_chip` x chips. Validated for the slice's chip count (ConfigError names the field)."""
    s = hardware.tpu_slice(slice_name)
    c = config.copy_and_resolve_references()
    c.unlock()
    if batch and batch_per_chip:
        raise PlanError("give --batch (global) or --batch_per_chip, not both")
    if mesh:
        axes = parse_mesh(mesh)
        n = axes["data"] * axes["fsdp"] * axes["model"]
        if n != s.chips:
            raise PlanError(f"--mesh {mesh!r} has {n} devices but {s.name} has {s.chips} chips")
        if strategy:
            c.parallel.strategy = strategy
        apply_mesh(c, axes)
        if strategy and c.parallel.strategy != strategy:
            raise PlanError(f"--mesh {mesh!r} is a {c.parallel.strategy} mesh, not {strategy}")
    elif strategy:
        if strategy not in STRATEGY_MESHES:
            raise PlanError(f"--strategy {strategy!r} is not one of {tuple(STRATEGY_MESHES)}")
        c.parallel.strategy = strategy
        m = STRATEGY_MESHES[strategy](s.chips)
        c.parallel.mesh_data, c.parallel.mesh_fsdp, c.parallel.mesh_model = m["data"], m["fsdp"], m["model"]
    if batch_per_chip:
        c.train.batch_size = int(batch_per_chip) * s.chips
    elif batch:
        c.train.batch_size = int(batch)
    validate(c, num_devices=s.chips)
    return c


@dataclasses.dataclass
class CompiledProgram:
    name: str
    kind: str  # iteration | phase | sample
    weight: float  # runs per amortised iteration
    lower_s: float = 0.0
    compile_s: float = 0.0
    stats: dict | None = None  # ganjax.bench.compiled.stats, when it compiled
    oom: dict | None = None  # {"required_bytes", "available_bytes", "message"}, when the compiler refused it
    collectives: list = dataclasses.field(default_factory=list)  # hlo_comm records, one per instruction
    cached: bool = False  # read from the plan cache (compile_s is then the original compile's)
    firing: tuple = ()  # an iteration variant's lazy phases (programs.Program.firing)


def _oom(error: Exception | str) -> dict | None:
    """{'message', 'required_bytes', 'available_bytes'} of the compiler's refusal (the byte counts where its
    message says them), or None for any other error."""
    text = str(error)
    if "RESOURCE_EXHAUSTED" not in text:
        return None
    m = next((m for m in (r.search(text) for r in _OOM) if m), None)
    out = {"message": text.strip().splitlines()[0][:500]}
    if m:
        out["required_bytes"] = float(m.group(1)) * _UNITS[m.group(2)]
        out["available_bytes"] = float(m.group(3)) * _UNITS[m.group(4)]
    return out


def _versions() -> str:
    try:
        libtpu = importlib.metadata.version("libtpu")
    except importlib.metadata.PackageNotFoundError:
        libtpu = "none"
    return f"jax {jax.__version__} jaxlib {jaxlib.__version__} libtpu {libtpu}"


def compile_program(prog: programs.Program, num_devices: int, cache_dir: str | None = None,
                    target: str = "") -> CompiledProgram:
    """Compile one program for the TPU and read it. With `cache_dir`, what the compiler said about it is
    kept there under a hash of the lowered program, the target slice and the compiler versions, and a later plan
    of the same program reads it instead of compiling (JAX's own cache cannot: a compile-only TPU client
    cannot load executables back)."""
    out = CompiledProgram(prog.name, prog.kind, prog.weight, firing=prog.firing)
    lowered, out.lower_s = prog.lower(platform="tpu")
    path = None
    if cache_dir:
        key = hashlib.sha256("\n".join([_versions(), target, lowered.as_text()]).encode()).hexdigest()
        path = os.path.join(os.path.expanduser(cache_dir), f"{prog.name}-{key[:40]}.json")
        if os.path.exists(path):
            with open(path) as f:
                cached = json.load(f)
            out.compile_s, out.stats, out.oom, out.collectives = (cached["compile_s"], cached["stats"],
                                                                  cached["oom"], cached["collectives"])
            if out.oom is not None:  # read again: kept before every form of the message was understood
                out.oom = _oom(out.oom["message"])
            out.cached = True
            return out
    t0 = time.perf_counter()
    try:
        compiled = lowered.compile()
        out.compile_s = time.perf_counter() - t0
        out.stats, out.collectives = compiled_lib.stats(compiled, num_devices)
    except jax.errors.JaxRuntimeError as e:
        out.compile_s = time.perf_counter() - t0
        out.oom = _oom(e)
        if out.oom is None:
            raise
    if path:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump({"compile_s": out.compile_s, "stats": out.stats, "oom": out.oom,
                       "collectives": out.collectives}, f)
        os.replace(tmp, path)
    return out


@functools.cache
def usable_hbm_bytes(generation: str) -> float:
    """HBM the TPU compiler lets one chip's program use: read from its own refusal of a 128 GiB program
    (a one-line compile), so it is libtpu's figure, not the datasheet's (the runtime reserves some)."""
    devices = tpu.devices(f"{generation}-{8 if hardware.ACCELERATORS[generation].slice_unit == 'cores' else 4}")
    mesh = jax.make_mesh((1,), ("x",), axis_types=(jax.sharding.AxisType.Auto,), devices=devices[:1])
    big = jax.ShapeDtypeStruct((2**35,), jnp.float32, sharding=parallel.replicated(mesh))
    try:
        jax.jit(lambda x: x + 1).lower(big).compile()
    except jax.errors.JaxRuntimeError as e:
        info = _oom(e)
        if info and "available_bytes" in info:
            return info["available_bytes"]
    return hardware.ACCELERATORS[generation].hbm_bytes


def compile_plan(config, slice_name: str, *, phases: bool = True, sample: bool = True, variants: str = "all",
                 log=None) -> tuple[setup.Training, list[CompiledProgram]]:
    """Compile the loop's programs of an already configured config (see `configure`) for the slice.

    variants: 'all' iteration variants, or one by name ('plain', 'r1', ...), or 'heaviest' (every lazy phase
    on: the largest program, which decides whether a batch fits; for the --max_batch search). The plan cache lives in
    config.compilation_cache/plan ("" turns it off)."""
    cache_dir = os.path.join(config.compilation_cache, "plan") if config.compilation_cache else None
    if not variants:
        raise PlanError("variants: give 'all', 'heaviest' or a variant's name (plain, r1, ...)")
    devices = tpu.devices(slice_name)
    mesh = parallel.make_mesh(config, devices)
    tr = setup.build(config, mesh)
    progs = programs.iteration_programs(tr)
    if variants == "heaviest":
        progs = [max(progs, key=lambda p: len(p.firing))]
    elif variants != "all":
        progs = [p for p in progs if p.name == variants]
        if not progs:
            raise PlanError(f"no iteration variant {variants!r}; this config runs "
                            f"{[p.name for p in programs.iteration_programs(tr)]}")
    progs += programs.phase_programs(tr) if phases else []
    progs += [programs.sample_program(tr, config.eval.batch_size)] if sample else []
    out = []
    for prog in progs:
        if log:
            log(f"plan: compiling {prog.kind} {prog.name} for {slice_name} ({config.parallel.strategy}, "
                f"batch {config.train.batch_size})")
        s = hardware.tpu_slice(slice_name)
        out.append(compile_program(prog, mesh.size, cache_dir, f"{s.topology_name} {s.accelerator.chip_config}"))
        if log:
            c = out[-1]
            log(f"plan:   {c.name}: " + ("from the plan cache, " if c.cached else "")
                + (f"{c.lower_s + c.compile_s:.1f} s" if c.stats else "does not fit"))
    return tr, out


def plan(config, slice_name: str, *, strategy: str | None = None, mesh: str | None = None, batch: int | None = None,
         batch_per_chip: int | None = None, phases: bool = True, sample: bool = True, variants: str = "all",
         assume_mfu: float | None = None, price_per_chip_hour: float | None = None, log=None) -> dict:
    """configure + compile_plan + roofline.plan_record: the plan record of `config` on the slice."""
    c = configure(config, slice_name, strategy=strategy, mesh=mesh, batch=batch, batch_per_chip=batch_per_chip)
    tr, compiled = compile_plan(c, slice_name, phases=phases, sample=sample, variants=variants, log=log)
    generation = hardware.tpu_slice(slice_name).generation
    return roofline.plan_record(
        tr, slice_name, compiled, usable_hbm_bytes(generation),
        assume_mfu=float(c.bench.assume_mfu if assume_mfu is None else assume_mfu),
        price_per_chip_hour=float(c.train.price_per_device_hour if price_per_chip_hour is None else price_per_chip_hour))
