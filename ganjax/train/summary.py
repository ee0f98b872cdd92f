"""Metric sinks of a run: workdir/metrics.jsonl and TensorBoard event files in workdir/tb.

The event files are written with tensorboard's own EventFileWriter and protos (no TensorFlow needed).
Only process 0 writes; other processes get a writer whose methods do nothing.
"""

import io
import json
import os
import time

import numpy as np


class MetricWriter:
    def __init__(self, workdir: str, enabled: bool = True):
        self.enabled = enabled
        self._jsonl = self._events = None
        if not enabled:
            return
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        os.makedirs(workdir, exist_ok=True)
        self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", buffering=1)
        self._events = EventFileWriter(os.path.join(workdir, "tb"))

    def _add(self, step: int, values: list):
        from tensorboard.compat.proto import event_pb2, summary_pb2

        event = event_pb2.Event(step=int(step), wall_time=time.time(), summary=summary_pb2.Summary(value=values))
        self._events.add_event(event)

    def scalars(self, step: int, metrics: dict):
        """One metrics.jsonl line (all values) and one TensorBoard scalar per numeric value."""
        if not self.enabled:
            return
        from tensorboard.compat.proto import summary_pb2

        self._jsonl.write(json.dumps({"step": int(step), **metrics}) + "\n")
        values = [summary_pb2.Summary.Value(tag=k, simple_value=float(v)) for k, v in metrics.items()
                  if isinstance(v, (int, float, np.number)) and not isinstance(v, bool)]
        self._add(step, values)

    def image(self, step: int, tag: str, image: np.ndarray):
        """A uint8 HWC image as a TensorBoard image summary (PNG-encoded)."""
        if not self.enabled:
            return
        import PIL.Image
        from tensorboard.compat.proto import summary_pb2

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
