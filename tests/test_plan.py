"""`ganjax plan`: the real training step compiled for TPU slices on this CPU host (libtpu's ahead-of-time
compiler), checked against numbers derived independently of the compiler: the parameter counts of the layer
walk (ganjax/models/flops.py, equal to the reference's), the Adam state they imply, the batch bytes.

Without libtpu (`pip install 'jax[tpu]'`, in the test extras) the compiling tests are skipped with that
reason; the bad-input tests run everywhere."""

import os
import sys

import pytest

from ganjax.models import flops
from ganjax.config import ConfigError, base_config
from ganjax.plan import tpu

tpu.prepare_environment()
NO_LIBTPU = tpu.libtpu_missing_reason()
needs_libtpu = pytest.mark.skipif(NO_LIBTPU is not None, reason=f"libtpu missing: {NO_LIBTPU}")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny(batch_per_chip=2, **model):
    """A GANsformer with few layers, so it compiles for a TPU quickly: 8^2, 2 local latents, attention at 4
    and 8. 512 channels: the TPU stores arrays in (8, 128) tiles, so on much narrower layers the padding
    of the small tensors (biases, the 8-wide mapping) would be a visible share of the state; here the
    convolutions (2.4 M parameters each) dominate it. Every large weight divides over 4 chips (fsdp)."""
    c = base_config()
    m = c.model
    m.resolution, m.channel_base, m.channel_max = 8, 4096, 512
    m.num_local, m.z_dim, m.w_dim, m.mapping_layers, m.mapping_attention = 2, 8, 8, 1, False
    m.attention_end_res, m.mbstd_group = 8, 2
    m.update(model)
    c.train.batch_size = batch_per_chip * 4
    c.eval.batch_size = 8
    c.compilation_cache = ""  # compile every time (no plan cache): these tests are about the compiler's output
    return c


def analytic_state_bytes(c, chips_sharing):
    """G, G_ema and D in float32 plus Adam's two float32 moments of G and D, split `chips_sharing` ways,
    plus one chip's share of the real batch: from the layer walk's parameter counts alone."""
    mf = flops.model_flops(c.model)
    state = 4 * (2 * mf.g_params + mf.d_params) + 8 * (mf.g_params + mf.d_params)
    m = c.model
    batch = c.train.batch_size * m.resolution ** 2 * m.num_channels * 4 / 4  # 4 chips in every test slice
    return state / chips_sharing + batch, mf


def sharded_and_replicated_param_bytes(c, strategy):
    """Full float32 bytes of the G and D parameters the strategy's rules shard over 4 devices, and of those
    they leave replicated (the same rules on 4 virtual CPU devices as on 4 chips)."""
    import jax

    from ganjax import parallel
    from ganjax.train import setup

    c = c.copy_and_resolve_references()
    c.parallel.strategy, c.parallel.mesh_data, c.parallel.mesh_fsdp = strategy, 1, 4
    tr = setup.build(c, parallel.make_mesh(c, jax.devices()[:4]))
    state, shardings = tr.abstract_state(), tr.state_shardings
    out = {"sharded": 0, "replicated": 0}
    for leaf, sh in zip(jax.tree.leaves((state.g_params, state.d_params)),
                        jax.tree.leaves((shardings.g_params, shardings.d_params))):
        out["replicated" if sh.is_fully_replicated else "sharded"] += 4 * leaf.size
    return out


@needs_libtpu
@pytest.mark.parametrize("slice_name", ["v5e-4", pytest.param("v5p-8", marks=pytest.mark.slow)])
def test_a_tiny_step_compiles_for_tpu_with_the_state_and_collectives_it_should_have(slice_name):
    """dp: every chip holds the whole state and all-reduces every gradient once; fsdp: a quarter of it,
    parameters all-gathered and gradients reduce-scattered."""
    from ganjax.plan import compile as compile_lib

    c = tiny()
    dp = compile_lib.plan(c, slice_name, strategy="dp", phases=False, sample=False, variants="plain")
    fsdp = compile_lib.plan(c, slice_name, strategy="fsdp", phases=False, sample=False, variants="plain")
    for rec, sharing in ((dp, 1), (fsdp, 4)):
        want, mf = analytic_state_bytes(c, sharing)
        for name, prog in rec["programs"].items():
            got = prog["memory"]["argument_bytes"]
            assert abs(got - want) <= 0.05 * want, (rec["strategy"], name, got, want)
        assert rec["memory"]["fits"] and rec["chip"]["usable_hbm_bytes"] > 10 * 2**30
    grads = 4 * (mf.g_params + mf.d_params)  # float32 gradients of G (G main) and D (D main)
    # Gradients are reduced over all 4 chips; minibatch-std's groups (2 samples, on 2 chips) reduce pairs.
    reduced = dp["programs"]["plain"]["comm"]["all-reduce"]["result_bytes_by_group_size"][4]
    assert abs(reduced - grads) <= 0.05 * grads, (reduced, grads)
    # fsdp: gradients are reduce-scattered to the shards. The TPU compiler all-reduces a few (measured: the
    # attention's 512 x 512 weights, 8% of the bytes) and those the rules leave replicated; the two kinds
    # together carry the gradient bytes once. Which parameters are sharded: the rules on 4 CPU devices.
    split = sharded_and_replicated_param_bytes(c, "fsdp")
    comm = fsdp["programs"]["plain"]["comm"]
    scattered = comm["reduce-scatter"]["result_bytes_by_group_size"][4] * 4  # a result is one chip's quarter
    reduced = comm["all-reduce"]["result_bytes_by_group_size"][4]
    assert scattered >= 0.85 * split["sharded"], (scattered, split)
    assert 0.95 * grads <= scattered + reduced <= 1.10 * grads, (scattered, reduced, grads)
    # G main runs G and D, D main runs G (no grad) and D: the sharded parameters are gathered for their uses.
    gathered = comm["all-gather"]["result_bytes_by_group_size"][4]
    assert 0.95 * split["sharded"] <= gathered <= 2.05 * split["sharded"], (gathered, split)
    r = dp["programs"]["plain"]["roofline"]
    assert r["bound"] in ("compute", "hbm", "comm") and r["step_s"] == max(r["compute_s"], r["hbm_s"], r["comm_s"]) > 0
    assert "iteration" not in dp  # only one of the two variants was compiled: no amortised iteration claimed


def test_bad_inputs_are_named_before_anything_compiles(monkeypatch):
    from ganjax import hardware
    from ganjax.plan import compile as compile_lib

    with pytest.raises(ValueError, match=r"unknown TPU slice 'v5p-7'; known: v4-8"):
        compile_lib.configure(tiny(), "v5p-7")
    with pytest.raises(compile_lib.PlanError, match=r"--mesh 'dp=8' has 8 devices but v5e-4 has 4 chips"):
        compile_lib.configure(tiny(), "v5e-4", mesh="dp=8")
    with pytest.raises(ConfigError, match=r"config.train.batch_size: the micro-batch 6 is not divisible by the 4 "
                                          r"batch shards"):
        compile_lib.configure(tiny(), "v5e-4", strategy="dp", batch=6)
    with pytest.raises(compile_lib.PlanError, match="not both"):
        compile_lib.configure(tiny(), "v5e-4", batch=8, batch_per_chip=2)
    if NO_LIBTPU is None:  # the variants are known once the trainer's programs are built (abstract, no compile)
        with pytest.raises(compile_lib.PlanError, match=r"no iteration variant 'r7'; this config runs \['plain', 'r1'\]"):
            compile_lib.compile_plan(compile_lib.configure(tiny(), "v5e-4", strategy="dp"), "v5e-4", variants="r7")
    monkeypatch.setattr(tpu.importlib.util, "find_spec", lambda name: None)
    tpu.devices.cache_clear()
    with pytest.raises(tpu.LibtpuMissing, match=r"pip install 'jax\[tpu\]=="):
        tpu.devices("v5e-4")
    assert hardware.tpu_slice("v5e-4").chips == 4


def test_the_plan_command_refuses_a_training_workdir_and_a_missing_slice(tmp_path):
    import subprocess

    (tmp_path / "checkpoints").mkdir()
    cmd = [sys.executable, "-m", "ganjax", "plan", "--config", "configs/gansformer.py:shapes32"]
    out = subprocess.run(cmd + ["--tpu", "v5e-4", "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode != 0 and "is a training workdir; a plan never writes into one" in out.stderr
    assert os.listdir(tmp_path) == ["checkpoints"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert out.returncode != 0 and "--tpu SLICE is required" in out.stderr and "v5p-8" in out.stderr
    out = subprocess.run(cmd + ["--tpu", "v9-8"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode != 0 and "unknown TPU slice 'v9-8'" in out.stderr


def _fake_compiler(monkeypatch, need_gib, usable_gib, accepts=None):
    """report.fits on a fake compiler whose heaviest iteration needs need_gib(b) GiB per chip by its memory
    analysis, and which accepts a batch where accepts(b) (default: where that fits the usable HBM); the batches
    it was asked for, in order."""
    from ganjax.plan import report

    calls = []

    def fake_fits(config, slice_name, b, strategy):
        calls.append(b)
        need = need_gib(b)
        ok = need <= usable_gib if accepts is None else accepts(b)
        return ok, {"memory": {"needed_bytes": need * 2**30, "usable_bytes": usable_gib * 2**30,
                               "tight": ok and need > usable_gib}}  # as roofline.plan_record marks it

    monkeypatch.setattr(report, "fits", fake_fits)
    return calls


def test_max_batch_finds_the_largest_fitting_multiple_in_few_compiles(monkeypatch):
    """Memory affine in the batch (1 GiB per image, 44 usable): two doublings give the line, its guess (44)
    fits and the next multiple does not, then two more past that refusal; 6 compiles where doubling and
    bisection took 8."""
    from ganjax.plan import report

    calls = _fake_compiler(monkeypatch, lambda b: b, 44)
    got = report.max_batch(None, "v5e-4", "dp", step=4, log=lambda m: None)
    assert got["max_batch_per_chip"] == 44 and calls == [4, 8, 44, 48, 52, 56] and got["compiles"] == 6
    assert got["needed_gib"][44] == 44 and got["usable_gib"] == 44
    # from the plan's own batch, as `ganjax plan --max_batch` starts: 32 and 64 give the line
    calls = _fake_compiler(monkeypatch, lambda b: 1.2 + 0.35 * b, 95.7)
    got = report.max_batch(None, "v5p-8", "dp", start=32, log=lambda m: None)
    assert got["max_batch_per_chip"] == 268 and calls[:3] == [32, 64, 268] and len(calls) == 6
    # nothing fits; a start that does not fit halves; everything fits up to the limit
    _fake_compiler(monkeypatch, lambda b: 100 + b, 50)
    assert report.max_batch(None, "v5e-4", "dp", log=lambda m: None)["max_batch_per_chip"] == 0
    calls = _fake_compiler(monkeypatch, lambda b: b, 10)
    assert report.max_batch(None, "v5e-4", "dp", start=32, log=lambda m: None)["max_batch_per_chip"] == 8
    assert calls[:3] == [32, 16, 8]
    _fake_compiler(monkeypatch, lambda b: 0, 1)
    assert report.max_batch(None, "v5e-4", "dp", limit=64, log=lambda m: None)["max_batch_per_chip"] == 64


def test_max_batch_looks_past_a_refusal_because_memory_is_not_monotone(monkeypatch):
    """As the TPU compiler did for ffhq256 on v5e-8 fsdp (36 per chip needed 15.64 GiB, 40 needed 14.62): here
    40 is refused and 44 fits. The line lands on 40, its neighbour 36 fits, and the search goes on past the
    refusal to 44; with beyond=0 it stops at 36."""
    from ganjax.plan import report

    need = lambda b: {40: 41, 44: 40}.get(b, b)  # noqa: E731
    calls = _fake_compiler(monkeypatch, need, 40.5)
    got = report.max_batch(None, "v5e-8", "fsdp", log=lambda m: None)
    assert got["max_batch_per_chip"] == 44 and got["tried"][40] is False and got["tried"][44] is True
    assert calls == [4, 8, 40, 36, 44, 48, 52, 56]
    assert "not monotone" in got["rule"] and "44 fits (40.00)" in report.max_batch_line(got)
    _fake_compiler(monkeypatch, need, 40.5)
    assert report.max_batch(None, "v5e-8", "fsdp", beyond=0, log=lambda m: None)["max_batch_per_chip"] == 36


def test_max_batch_tells_a_batch_the_compiler_accepted_without_headroom_from_one_with_it(monkeypatch):
    """As on v5p-8 dp for ffhq256 (372 per chip accepted while its memory analysis totalled 103.66 of 95.74
    GiB): the compiler's acceptance decides the max batch; the largest batch whose analysis stays under the
    usable HBM is reported beside it, and each tight batch is marked."""
    from ganjax.plan import report

    _fake_compiler(monkeypatch, lambda b: b, 40.5, accepts=lambda b: b <= 48)
    lines = []
    got = report.max_batch(None, "v5p-8", "dp", log=lines.append)
    assert got["max_batch_per_chip"] == 48 and got["max_batch_with_headroom"] == 40
    assert "plan --max_batch dp: 48 per chip fits, tight (48.00 of 40.50 GiB)" in lines
    text = report.max_batch_line(got)
    assert "dp: 48; with its memory analysis under the usable HBM: 40" in text
    assert "40 fits (40.00)" in text and "48 fits, tight (48.00)" in text and "52 refused (52.00)" in text


@needs_libtpu
@pytest.mark.slow
def test_a_model_too_large_for_v5e_does_not_fit_there_and_fits_v5p():
    """~1.3 B parameters replicated (dp) need ~19 GiB of state per chip: more than a v5e has."""
    from ganjax.plan import compile as compile_lib

    c = tiny(batch_per_chip=1, channel_base=8 * 4096, channel_max=4096, mbstd_group=1)
    want, _ = analytic_state_bytes(c, 1)
    small = compile_lib.plan(c, "v5e-4", strategy="dp", phases=False, sample=False, variants="heaviest")
    assert not small["memory"]["fits"]
    assert small["verdict"].startswith("does not fit: needs ") and "GiB more per chip" in small["verdict"]
    assert small["memory"]["needed_bytes"] >= want > small["memory"]["usable_bytes"]
    big = compile_lib.plan(c, "v5p-8", strategy="dp", phases=False, sample=False, variants="heaviest")
    assert big["memory"]["fits"] and big["verdict"].startswith("fits with ")


@needs_libtpu
@pytest.mark.slow
def test_the_largest_batch_that_fits_grows_with_the_chips_hbm():
    """This 8^2 model needs ~4.4 MB more per image (v5e-4 fsdp: 1.06 GiB per chip at 64 per chip, 3.09 at 512;
    with a limit of 512 both chips reached it), so a v5e's 15.75 usable GiB caps it near 3300 per chip. The
    search on v5e-4 starts at 2048; the first batch it refused above its max is then compiled for v5p-8 (95.74
    usable GiB), where it fits. Five compiles or so."""
    from ganjax.plan import report

    c = tiny(channel_base=8 * 1024, channel_max=1024, mbstd_group=1)
    small = report.max_batch(c, "v5e-4", "fsdp", step=256, limit=8192, start=2048, beyond=0, log=print)
    assert 0 < small["max_batch_per_chip"] < 8192, small
    refused = min(b for b, f in small["tried"].items() if not f and b > small["max_batch_per_chip"])
    big = report.max_batch(c, "v5p-8", "fsdp", step=256, limit=refused, start=refused, beyond=0, log=print)
    assert big["max_batch_per_chip"] == refused and big["compiles"] == 1, (small, big)


def test_an_assumed_mfu_above_the_roofline_ceiling_is_flagged():
    """The cost at an assumed MFU whose step is faster than the roofline's is marked unreachable, never shown
    as a plain estimate (found on v6e-8: 40% assumed against a 25.9% ceiling gave a cost below the roofline's)."""
    from ganjax.plan.roofline import run_cost

    c = base_config()
    assert run_cost(c, 8, 0.182, 0.118, 0.4, 0.0)["assumed_beats_roofline"]
    assert not run_cost(c, 8, 0.107, 0.190, 0.4, 0.0)["assumed_beats_roofline"]


def test_the_sweep_writes_its_table_plot_and_max_batches_for_every_point(tmp_path, monkeypatch):
    """`ganjax plan --sweep --max_batch` on a fake compiler (the compiles are the tests above): every slice x
    strategy x size is one CSV/markdown row, each with its max-batch search (started at the plan's batch),
    and the plot is written. HBM here is 1 GiB of state per channel_max/512 plus 0.25 GiB per image."""
    import csv

    from ganjax.plan import report

    def fake_plan(c, slice_name, strategy, batch_per_chip):
        usable = {"v5e-8": 15.75, "v5p-8": 95.74}[slice_name]
        need = c.model.channel_max / 512 + 0.25 * batch_per_chip
        return {"name": c.name, "slice": slice_name, "chips": 8, "strategy": strategy,
                "batch_per_chip": batch_per_chip, "params": {"g": c.model.channel_max, "d": c.model.channel_max},
                "memory": {"fits": need <= usable, "tight": False, "needed_bytes": need * 2**30,
                           "usable_bytes": usable * 2**30},
                "iteration": {"step_s": 0.1, "bound": "compute", "comm_bytes": 1e6, "comm_share": 0.01,
                              "img_per_s_per_chip": 10 * batch_per_chip, "mfu_ceiling": 0.9},
                "verdict": "fits" if need <= usable else "does not fit", "compile_s": 1.0}

    monkeypatch.setattr(report, "fits", lambda c, s, b, st: (lambda r: (r["memory"]["fits"], r))(fake_plan(c, s, st, b)))
    c = tiny(channel_max=1024)
    rows = report.sweep(c, ["v5e-8", "v5p-8"], ["dp", "fsdp"], ["s", "m"], 8, str(tmp_path), max_batch_search=True,
                        plan_one=fake_plan, log=lambda m: None)
    assert len(rows) == 8 and all(r["fits"] for r in rows)
    with open(tmp_path / "plan_sweep.csv") as f:
        got = list(csv.DictReader(f))
    assert [(r["size"], r["slice"], r["strategy"]) for r in got][:3] == [("s", "v5e-8", "dp"), ("s", "v5e-8", "fsdp"),
                                                                          ("s", "v5p-8", "dp")]
    md = (tmp_path / "plan_sweep.md").read_text()
    # size s halves channel_max to 512 (1 GiB of state): v5e fits (15.75 - 1) / 0.25 = 59 -> 56 per chip
    assert "| s | v5e-8 | dp | 1,024 | 56 | 56 |" in md and "| m | v5p-8 | fsdp | 2,048 | 372 | 372 |" in md
    assert (tmp_path / "plan_sweep.png").stat().st_size > 10_000
    assert len((tmp_path / "plan_sweep.jsonl").read_text().splitlines()) == 8


def test_both_forms_of_the_tpu_compilers_refusal_give_the_bytes_it_needed():
    """The messages as libtpu 0.0.42.1 wrote them (from this host's plan cache): the v5e form without the
    byte counts used to leave the needed HBM unknown (printed as inf)."""
    from ganjax.plan.compile import _oom

    a = _oom("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO temporaries "
             "(103.03G) exceeds available HBM (95.74G).")
    b = _oom("RESOURCE_EXHAUSTED: E1000: CompileTimeHbmOom: XLA:TPU compile permanent error. Ran out of memory "
             "in memory space hbm. Used 15.88G of 15.75G hbm. Exceeded hbm capacity by 132.48M.")
    assert a["required_bytes"] == 103.03 * 2**30 and a["available_bytes"] == 95.74 * 2**30
    assert b["required_bytes"] == 15.88 * 2**30 and b["available_bytes"] == 15.75 * 2**30
    assert _oom("INVALID_ARGUMENT: something else") is None
