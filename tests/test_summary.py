"""Metric sinks across a resume from an earlier step: metrics.jsonl and TensorBoard keep one record per step."""

import json
import time

from tensorboard.backend.event_processing import event_accumulator

from ganjax.train.summary import MetricWriter


def test_a_resume_from_an_earlier_step_keeps_one_record_per_step(tmp_path, capsys):
    first = MetricWriter(str(tmp_path), start_step=0)
    for step in (1, 2, 3, 4):
        first.scalars(step, {"D/loss": float(step)})
    first.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "D/lo')  # a torn line from a killed writer
    time.sleep(1.1)  # TensorBoard orders event files by their second-resolution names
    resumed = MetricWriter(str(tmp_path), start_step=2)  # e.g. --resume_step 2, or a damaged step 4
    assert "dropped 3 records after step 2" in capsys.readouterr().out
    for step in (3, 4):
        resumed.scalars(step, {"D/loss": 10.0 * step})
    resumed.close()

    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["D/loss"]) for r in records] == [(1, 1.0), (2, 2.0), (3, 30.0), (4, 40.0)]
    acc = event_accumulator.EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("D/loss")] == [(1, 1.0), (2, 2.0), (3, 30.0), (4, 40.0)]
