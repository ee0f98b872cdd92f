"""Metric sinks of a run: workdir/metrics.jsonl and TensorBoard event files in workdir/tb.

The event files are written with tensorboard's own EventFileWriter and protos (no TensorFlow needed).
Only process 0 writes; other processes get a writer whose methods do nothing.
"""

import io
import json
import os
import time

import numpy as np
import PIL.Image
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter


def trim_jsonl(path: str, last_step: int) -> int:
    """Drops the records of steps after `last_step` (and a torn last line) from a metrics.jsonl; returns how
    many lines were dropped. A run resumed from an earlier checkpoint then writes those steps once."""
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        lines = f.read().splitlines()
    kept = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if int(record.get("step", 0)) <= last_step:
            kept.append(line)
    if len(kept) != len(lines):
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write("".join(k + "\n" for k in kept))
        os.replace(tmp, path)
    return len(lines) - len(kept)


class MetricWriter:
    """`start_step`: the step the run starts from (a resume's restored step): metrics.jsonl loses the records
    of later steps, and TensorBoard is told to drop its events of later steps (a SessionLog START, which
    TensorBoard purges from)."""

    def __init__(self, workdir: str, enabled: bool = True, start_step: int | None = None):
        self.enabled = enabled
        self._jsonl = self._events = None
        if not enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        path = os.path.join(workdir, "metrics.jsonl")
        if start_step is not None:
            dropped = trim_jsonl(path, start_step)
            if dropped:
                print(f"metrics.jsonl: dropped {dropped} records after step {start_step}, the step this run "
                      f"resumes from", flush=True)
        self._jsonl = open(path, "a", buffering=1)
        self._events = EventFileWriter(os.path.join(workdir, "tb"))
        if start_step is not None and start_step > 0:
            self._events.add_event(event_pb2.Event(step=int(start_step) + 1, wall_time=time.time(),
                                                   session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)))

    def _add(self, step: int, values: list):
        event = event_pb2.Event(step=int(step), wall_time=time.time(), summary=summary_pb2.Summary(value=values))
        self._events.add_event(event)

    def scalars(self, step: int, metrics: dict):
        """One metrics.jsonl line (all values) and one TensorBoard scalar per numeric value."""
        if not self.enabled:
            return
        self._jsonl.write(json.dumps({"step": int(step), **metrics}) + "\n")
        values = [summary_pb2.Summary.Value(tag=k, simple_value=float(v)) for k, v in metrics.items()
                  if isinstance(v, (int, float, np.number)) and not isinstance(v, bool)]
        self._add(step, values)

    def image(self, step: int, tag: str, image: np.ndarray):
        """A uint8 HWC image as a TensorBoard image summary (PNG-encoded)."""
        if not self.enabled:
            return
        buf = io.BytesIO()
        PIL.Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buf, format="PNG")
        img = summary_pb2.Summary.Image(height=image.shape[0], width=image.shape[1], colorspace=image.shape[-1],
                                        encoded_image_string=buf.getvalue())
        self._add(step, [summary_pb2.Summary.Value(tag=tag, image=img)])

    def flush(self):
        if self.enabled:
            self._events.flush()
            self._jsonl.flush()

    def close(self):
        if self.enabled:
            self._events.close()
            self._jsonl.close()
            self.enabled = False
