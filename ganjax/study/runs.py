"""The runs of a study, read from their workdirs: what was trained (config.json), on what (hardware.json),
how far it got, and its FID at each evaluation with the compute, wall time and kimg at that step
(metrics.jsonl). A sweep directory (runs in its sub-directories, sweep.json with each run's status) or single
workdirs may be given.

A run's status: `finished` (it reached its length: train.total_kimg or its budget), `failed` (its sweep says
so and it did not finish), `unfinished` (stopped or still running). Its FID protocol is the one its scores
are comparable within: the metric and its image count, the dataset, the resolution and the FID
preprocessing. Its group (for the fitted laws and the legend) is its model family or any config fields.
"""

import dataclasses
import json
import os

import ml_collections

from ganjax.config import base_config
from ganjax.metrics.reference import fid_protocol
from ganjax.train import length
from ganjax.train.loop import HARDWARE_FILE

METRICS_FILE, CONFIG_FILE, SWEEP_FILE = "metrics.jsonl", "config.json", "sweep.json"
FAMILY = "family"  # the group key derived from the model: GANsformer or StyleGAN2


@dataclasses.dataclass
class Run:
    name: str
    workdir: str
    config: ml_collections.ConfigDict
    status: str
    hardware: str
    points: list  # [{"step", "kimg", "pflops", "wall_hours", "fid"}], one per evaluation, in step order
    last_step: int
    group: str = ""

    @property
    def protocol(self) -> str:
        return protocol(self.config)


def family(config) -> str:
    """GANsformer (local latents or attention) or StyleGAN2 (neither), from the model section."""
    m = config.model
    return "StyleGAN2" if m.num_local == 0 and m.attention == "none" else "GANsformer"


def protocol(config) -> str:
    """'FID-1k, shapes 32x32, pytorch-fid': what makes two FIDs comparable."""
    e, d = config.eval, config.data
    n = int(e.num_images)
    count = f"{n // 1000}k" if n % 1000 == 0 else str(n)
    dataset = d.folder if d.dataset == "folder" else d.dataset
    return f"FID-{count}, {dataset} {config.model.resolution}x{config.model.resolution}, {fid_protocol(config)}"


def group_of(config, keys) -> str:
    """The group label of `keys` (FAMILY or dotted config paths): 'GANsformer', 'GANsformer, channel_base=1024'."""
    parts = []
    for key in keys:
        if key == FAMILY:
            parts.append(family(config))
            continue
        node = config
        for part in key.split("."):
            if part not in node:
                raise ValueError(f"--group_by {key!r}: the runs' config has no field {key!r}")
            node = node[part]
        parts.append(f"{key.rsplit('.', 1)[-1]}={node}")
    return ", ".join(parts)


def _merged(saved: dict, into: ml_collections.ConfigDict):
    """The saved config over today's defaults (a run written before a field existed gets its default)."""
    for key, value in saved.items():
        if key in into and isinstance(into[key], ml_collections.ConfigDict) and isinstance(value, dict):
            _merged(value, into[key])
        else:
            with into.unlocked():
                into[key] = value
    return into


def _records(path: str) -> list[dict]:
    out = []
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line of a killed run
            if isinstance(record, dict) and "step" in record:
                out.append(record)
    return out


def _finished(config, records) -> bool:
    if not records:
        return False
    last = records[-1]
    return length.reached(config.train, float(last.get("kimg", 0.0)), float(last.get("compute/pflops", 0.0)),
                          float(last.get("compute/device_seconds", 0.0)))


def load_run(workdir: str, sweep_status: str | None = None) -> Run:
    with open(os.path.join(workdir, CONFIG_FILE)) as f:
        config = _merged(json.load(f), base_config())
    path = os.path.join(workdir, METRICS_FILE)
    records = _records(path) if os.path.exists(path) else []
    hardware, devices = "unknown hardware", None
    if os.path.exists(os.path.join(workdir, HARDWARE_FILE)):
        with open(os.path.join(workdir, HARDWARE_FILE)) as f:
            info = json.load(f)
        hardware, devices = info["hardware"], info["devices"]
    points = []
    for r in records:
        if "fid" not in r:
            continue
        device_hours = r.get("compute/device_hours", float("nan"))
        points.append({"step": int(r["step"]), "kimg": r.get("kimg", float("nan")),
                       "pflops": r.get("compute/pflops", float("nan")),
                       "wall_hours": device_hours / devices if devices else float("nan"),
                       "fid": float(r["fid"])})
    if _finished(config, records):
        status = "finished"
    elif sweep_status is not None and sweep_status.startswith("failed"):
        status = "failed"
    else:
        status = "unfinished"
    return Run(os.path.basename(os.path.normpath(workdir)), workdir, config, status, hardware, points,
               int(records[-1]["step"]) if records else 0)


def _sweep_statuses(directory: str) -> dict:
    path = os.path.join(directory, SWEEP_FILE)
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return {r["name"]: r["status"] for r in json.load(f)}


def find_runs(directories, group_by=(FAMILY,)) -> list[Run]:
    """Every run in `directories`: each is a run's workdir (holding config.json) or a directory of them (a
    sweep). Raises ValueError when none holds a run."""
    runs = []
    for directory in directories:
        if not os.path.isdir(directory):
            raise ValueError(f"{directory}: not a directory")
        if os.path.exists(os.path.join(directory, CONFIG_FILE)):
            runs.append(load_run(directory))
            continue
        statuses = _sweep_statuses(directory)
        for name in sorted(os.listdir(directory)):
            sub = os.path.join(directory, name)
            if os.path.exists(os.path.join(sub, CONFIG_FILE)):
                runs.append(load_run(sub, statuses.get(name)))
    if not runs:
        raise ValueError(f"no runs in {', '.join(directories)}: a run is a workdir with {CONFIG_FILE} "
                         f"(written when `ganjax train` starts), or a directory of such workdirs (a sweep)")
    names = [r.name for r in runs]
    if len(set(names)) < len(names):  # runs of different sweeps with the same name: tell them apart
        for r in runs:
            r.name = os.path.relpath(r.workdir, os.path.commonpath([x.workdir for x in runs]))
    for r in runs:
        r.group = group_of(r.config, group_by)
    return runs


def warnings(runs) -> list[str]:
    """What the reader of the report must know: several FID protocols (separate panels), runs without FID."""
    out = []
    protocols = sorted({r.protocol for r in runs})
    if len(protocols) > 1:
        out.append(f"the runs use {len(protocols)} FID protocols ({'; '.join(protocols)}); their FIDs are "
                   f"not comparable, so each protocol has its own panel, frontier and fits")
    without = [r.name for r in runs if not r.points]
    if without:
        out.append(f"{len(without)} run(s) have no FID records and are in the tables only: {without}")
    return out
