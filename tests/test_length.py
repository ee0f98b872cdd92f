"""A run's length (kimg or a compute budget) and the evaluation schedule over it (ganjax/train/length.py):
budget stops within one step, evaluation at the same compute fractions for runs of different per-image
cost, wall-clock budgets, and the bad inputs."""

import math

import pytest

from ganjax.config import ConfigError, base_config, validate
from ganjax.models import ModelConfig
from ganjax.train.cost import train_flops_per_image
from ganjax.train.length import EvalSchedule, RunLength, parse_fractions


def tiny(family="gansformer"):
    c = base_config()
    m = c.model
    m.resolution, m.channel_base, m.channel_max = 16, 256, 16
    if family == "gansformer":
        m.num_local, m.z_dim, m.w_dim, m.mapping_layers, m.attention_end_res = 2, 8, 8, 1, 8
    else:  # configs/stylegan2.py's model, small
        m.num_local, m.z_dim, m.w_dim, m.mapping_layers, m.mapping_resnet = 0, 32, 32, 4, False
        m.attention, m.mapping_attention, m.global_modulation, m.architecture_g = "none", False, True, "skip"
        m.channel_base, m.channel_max = 512, 32  # wider: a different per-image cost
    c.train.batch_size = 8
    return c


def per_step_pflops(c):
    """One step's training compute, from the cost meter's own per-image count (independent of RunLength)."""
    return c.train.batch_size * train_flops_per_image(ModelConfig.from_config(c.model), c.train) / 1e15


def budget(c, pflops, fractions=""):
    c.train.total_kimg, c.train.total_pflops = 0.0, pflops
    c.eval.at_fractions = fractions
    return validate(c)


@pytest.mark.parametrize("steps", [1.0, 5.0, 5.5, 37.2])
def test_a_compute_budget_ends_at_the_first_step_that_reaches_it(steps):
    c = tiny()
    one = per_step_pflops(c)
    n = RunLength(budget(c, steps * one))
    assert n.total_steps == math.ceil(steps - 1e-9)
    # within one step of the budget: the last step reaches it, the one before does not
    assert n.pflops(n.total_steps) >= c.train.total_pflops * (1 - 1e-12)
    assert n.pflops(n.total_steps - 1) < c.train.total_pflops
    assert not n.finished(n.total_steps - 1, 0.0) and n.finished(n.total_steps, 0.0)


def test_kimg_lengths_keep_their_step_count():
    c = tiny()
    c.train.total_kimg = 0.1  # 12.5 steps of 8 -> 13, as before budgets existed
    assert RunLength(validate(c)).total_steps == 13


def test_evaluations_fall_at_the_same_compute_fractions_for_runs_of_different_cost():
    small, large = tiny("gansformer"), tiny("stylegan2")
    c_small, c_large = per_step_pflops(small), per_step_pflops(large)
    assert c_large > 2 * c_small  # the two families differ in per-image cost
    total = 40 * c_large
    runs = {}
    for name, c in (("gansformer", small), ("stylegan2", large)):
        n = RunLength(budget(c, total, "0.25,0.5,1"))
        s = EvalSchedule(c, n)
        runs[name] = (n, [step for step in range(1, n.total_steps + 1) if s.due(step, step == n.total_steps)])
    for name, (n, steps) in runs.items():
        assert len(steps) == 3, (name, steps)
        for f, step in zip((0.25, 0.5, 1.0), steps):  # the first step at or past each fraction of the budget
            assert n.pflops(step) >= f * total * (1 - 1e-12) > n.pflops(step - 1), (name, f, step)
    assert runs["gansformer"][1] != runs["stylegan2"][1]  # different step counts ...
    for i in range(3):  # ... the same compute, to within one step of each run
        a, b = (runs[k][0].pflops(runs[k][1][i]) for k in runs)
        assert abs(a - b) <= max(c_small, c_large)


def test_every_kimg_evaluates_on_interval_crossings_and_at_the_last_step():
    c = tiny()
    c.train.total_kimg = 0.1  # 13 steps of 8
    c.eval.every_kimg = 0.04  # every 5 steps
    n = RunLength(validate(c))
    s = EvalSchedule(c, n)
    assert [step for step in range(1, 14) if s.due(step, n.finished(step, 0.0))] == [5, 10, 13]


def test_every_pflops_and_every_kimg_combine_and_the_last_step_always_evaluates():
    c = tiny()
    one = per_step_pflops(c)
    c = budget(c, 10 * one)
    c.eval.every_pflops = 3 * one * (1 + 1e-9)  # crossed after steps 4, 7, 10 (3.000...1 x k)
    c.eval.every_kimg = 0.064  # every 8 steps
    n = RunLength(c)
    s = EvalSchedule(c, n)
    assert [step for step in range(1, 11) if s.due(step, step == n.total_steps)] == [4, 7, 8, 10]
    c.eval.every_pflops, c.eval.every_kimg = 0.0, 0.0
    assert not EvalSchedule.enabled(c)


def test_wall_clock_budgets_end_and_evaluate_on_the_device_seconds():
    c = tiny()
    c.train.total_kimg, c.train.total_device_hours = 0.0, 0.5
    c.eval.at_fractions = "0.5,1"
    n = RunLength(validate(c))
    assert n.total_steps is None and n.wall_clock and n.budget_seconds == 1800
    s = EvalSchedule(c, n, device_seconds=100.0)  # resumed with the meter at 100 s
    seconds = {1: 400.0, 2: 899.0, 3: 901.0, 4: 1700.0, 5: 1800.0}
    due = [step for step, sec in seconds.items() if s.due(step, n.finished(step, sec), sec)]
    assert due == [3, 5] and n.finished(5, 1800.0) and not n.finished(4, 1700.0)
    # money: device-hours at the price
    c.train.total_device_hours, c.train.total_cost, c.train.price_per_device_hour = 0.0, 6.0, 4.0
    assert RunLength(validate(c)).budget_seconds == pytest.approx(1.5 * 3600)


@pytest.mark.parametrize("change, message", [
    (dict(total_pflops=1.0), r"total_kimg=8\.0.*total_pflops=1\.0.*total_kimg=0"),
    (dict(total_kimg=0.0), r"a run's length is one of total_kimg, total_pflops.*set one of them > 0"),
    (dict(total_kimg=0.0, total_pflops=1e-12), r"total_pflops: 1e-12 is less than one training step"),
    (dict(total_kimg=0.0, total_cost=10.0), r"total_cost: 10\.0 needs config.train.price_per_device_hour > 0"),
    (dict(total_kimg=0.0, total_pflops=-1.0), r"total_pflops: -1\.0 is not in \[0"),
])
def test_bad_lengths_are_refused_by_name(change, message):
    c = tiny()
    c.train.total_kimg = 8.0
    for k, v in change.items():
        c.train[k] = v
    with pytest.raises(ConfigError, match=message):
        validate(c)


@pytest.mark.parametrize("text, message", [("0.5,x", "'x' is not a number"), ("0,1", "0 is not in"),
                                           ("1.5", "1.5 is not in")])
def test_bad_fractions_are_refused(text, message):
    with pytest.raises(ValueError, match=message):
        parse_fractions(text)
    c = tiny()
    c.eval.at_fractions = text
    with pytest.raises(ConfigError, match=r"config.eval.at_fractions"):
        validate(c)


def test_fractions_parse_sorted_and_unique():
    assert parse_fractions(" 1, 0.25,0.5,0.25 ") == (0.25, 0.5, 1.0) and parse_fractions("") == ()
