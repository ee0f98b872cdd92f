"""`ganjax train --config configs/<file>.py:<preset> --workdir DIR [--fresh]`.

Every config field can be overridden on the command line, e.g. `--config.train.batch_size=64`.
A run resumes from DIR/checkpoints unless --fresh.
"""

from absl import flags
from ml_collections import config_flags

from ganjax.checkpoint import CheckpointError
from ganjax.data import DatasetDamaged
from ganjax.train.loop import TrainingStopped, train
from ganjax.train.workdir_lock import WorkdirLocked

config_flags.DEFINE_config_file("config", None, "config file with an optional :preset", lock_config=True)
flags.DEFINE_string("workdir", None, "run directory (config.json, metrics, samples, checkpoints)", required=True)
flags.DEFINE_bool("fresh", False, "start from scratch: delete DIR's checkpoints, metrics and samples first")
flags.DEFINE_integer("resume_step", None, "resume from this checkpoint step instead of the latest readable one "
                     "(newer ones, and a damaged latest one, are moved to DIR/checkpoints_aside)")
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise SystemExit(f"ganjax train: unexpected arguments {argv[1:]}")
    if FLAGS.config is None:
        raise SystemExit("ganjax train needs --config configs/<file>.py[:preset]")
    try:
        if FLAGS.fresh and FLAGS.resume_step is not None:
            raise SystemExit("ganjax train: --fresh and --resume_step contradict each other")
        train(FLAGS.config, FLAGS.workdir, fresh=FLAGS.fresh, resume_step=FLAGS.resume_step)
    except (TrainingStopped, WorkdirLocked, CheckpointError, DatasetDamaged) as e:
        raise SystemExit(f"ganjax train: {e}") from None
