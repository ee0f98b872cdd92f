"""`ganjax sample --checkpoint PATH [--n 64 | --seeds 1,2,5-9] [--psi 0.7] (--out grid.png | --out_dir DIR)`
plus GANsformer's insight outputs, each written when its path is given (any combination):
  --attention a.png       rows = seeds, columns = the image, then per attention layer which latent owns each
                          region (argmax over latents of the head-averaged maps), one colour per latent
  --variation v.png       the first seed with one latent component resampled per row (last row: the global
                          latent), --variations columns after the unmodified image
  --truncation t.png      rows = seeds, columns = --truncation_psis (0 = the w_avg image)
  --interpolation i.gif   --frames frames through the seeds' latents in order (--interp slerp|lerp)

PATH is an exported generator (`ganjax export`), a workdir, its checkpoints dir or one step dir. Seed s
always gives the same image, whatever else is sampled with it (the seed scheme of ganjax/sampling.py, which
the training loop's sample grids and the insight outputs share).

A conditional generator needs --class N (every output in class N) or --class all (--out and --out_dir:
every seed in every class, one grid row per class, files class<c>_seed<s>.png; the insight outputs then
use class 0).
"""

import os
import re

from absl import flags

from ganjax import insight, sampling, viz
from ganjax.checkpoint import CheckpointError, load_generator

flags.DEFINE_string("checkpoint", None, "exported generator, workdir, checkpoints dir or step dir", required=True)
flags.DEFINE_integer("n", 64, "number of images, seeds 0..n-1 (ignored when --seeds is given)")
flags.DEFINE_string("seeds", "", "comma list of seeds and inclusive ranges, e.g. 1,2,5-9")
flags.DEFINE_float("psi", 1.0, "truncation psi: 1 = none, smaller trades variety for quality")
flags.DEFINE_enum("noise_mode", "const", ["const", "random", "none"], "per-pixel noise of the synthesis layers")
flags.DEFINE_alias("noise-mode", "noise_mode")
flags.DEFINE_string("out", "", "write one PNG grid of all images here")
flags.DEFINE_string("out_dir", "", "write one PNG per image here, named by its seed: seed0001.png, ...")
flags.DEFINE_alias("out-dir", "out_dir")
flags.DEFINE_integer("cols", 0, "grid columns (0 = ceil(sqrt(number of images)))")
flags.DEFINE_integer("batch_size", 16, "images per generator call")
flags.DEFINE_string("class", None, "a conditional generator's class: an index, or 'all' for one grid row per class")
flags.DEFINE_integer("step", None, "training step to load from a workdir (default: the latest)")
flags.DEFINE_string("attention", "", "write the attention-map overlays of the seeds here (PNG)")
flags.DEFINE_float("alpha", 0.6, "weight of the latent colours over the image in --attention (1 = colours only)")
flags.DEFINE_string("variation", "", "write the per-latent variation grid of the first seed here (PNG)")
flags.DEFINE_integer("variations", 6, "resampled versions of each latent component in --variation")
flags.DEFINE_string("truncation", "", "write a truncation sweep of the seeds here (PNG)")
flags.DEFINE_string("truncation_psis", "-1,-0.5,0,0.5,1", "comma list of psi values of --truncation")
flags.DEFINE_string("interpolation", "", "write a latent interpolation through the seeds here (GIF)")
flags.DEFINE_integer("frames", 48, "frames of --interpolation")
flags.DEFINE_enum("interp", "slerp", ["slerp", "lerp"], "interpolation in z of --interpolation")
flags.DEFINE_float("fps", 12.0, "frames per second of --interpolation")
flags.DEFINE_integer("scale", 1, "write every output this many times larger (nearest neighbour), e.g. 4 for 32^2 "
                     "samples")
FLAGS = flags.FLAGS


def parse_seeds(text: str) -> list[int]:
    """'1,2,5-9' -> [1, 2, 5, 6, 7, 8, 9]."""
    seeds = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m or (m.group(2) is not None and int(m.group(2)) < int(m.group(1))):
            raise ValueError(f"--seeds: {part!r} is not a seed or an increasing range like 5-9")
        lo = int(m.group(1))
        seeds += list(range(lo, int(m.group(2) or lo) + 1))
    if not seeds:
        raise ValueError("--seeds: no seeds given")
    return seeds


def main(argv):
    if len(argv) > 1:
        raise SystemExit(f"ganjax sample takes no positional arguments (got {argv[1:]})")
    outputs = (FLAGS.out, FLAGS.out_dir, FLAGS.attention, FLAGS.variation, FLAGS.truncation, FLAGS.interpolation)
    if not any(outputs):
        raise SystemExit("ganjax sample: give --out grid.png and/or --out_dir DIR (or an insight output: "
                         "--attention, --variation, --truncation, --interpolation)")
    if FLAGS.n < 1 or FLAGS.batch_size < 1:
        raise SystemExit("ganjax sample: --n and --batch_size must be >= 1")
    if FLAGS.variations < 1 or FLAGS.frames < 2 or FLAGS.fps <= 0 or not 0 <= FLAGS.alpha <= 1 or FLAGS.scale < 1:
        raise SystemExit("ganjax sample: --variations >= 1, --frames >= 2, --fps > 0, 0 <= --alpha <= 1, "
                         "--scale >= 1")
    try:
        seeds = parse_seeds(FLAGS.seeds) if FLAGS.seeds else list(range(FLAGS.n))
        psis = [float(p) for p in FLAGS.truncation_psis.split(",") if p.strip()]
    except ValueError as e:
        raise SystemExit(f"ganjax sample: {e} (--seeds / --truncation_psis)") from None
    if FLAGS.truncation and not psis:
        raise SystemExit("ganjax sample: --truncation_psis is empty")
    if FLAGS.interpolation and len(seeds) < 2:
        raise SystemExit("ganjax sample: --interpolation needs at least 2 seeds")

    try:
        G, variables, _ = load_generator(FLAGS.checkpoint, step=FLAGS.step)
    except CheckpointError as e:
        raise SystemExit(f"ganjax sample: {e}") from None
    classes = _classes(G, FLAGS["class"].value)
    if FLAGS.out or FLAGS.out_dir:
        labels = None if classes is None else [c for c in classes for _ in seeds]
        images = sampling.generate(G, variables, seeds * (1 if classes is None else len(classes)), psi=FLAGS.psi,
                                   labels=labels, noise_mode=FLAGS.noise_mode,
                                   batch_size=min(FLAGS.batch_size, len(seeds)))
    if FLAGS.out:
        cols = FLAGS.cols or (len(seeds) if classes is not None and len(classes) > 1 else None)
        viz.save_image_grid(images, FLAGS.out, cols=cols, scale=FLAGS.scale)
        print(f"wrote a grid of {len(images)} images to {FLAGS.out}")
    if FLAGS.out_dir:
        for i, img in enumerate(images):
            seed = seeds[i % len(seeds)]
            name = f"seed{seed:04d}.png" if classes is None else f"class{classes[i // len(seeds)]}_seed{seed:04d}.png"
            viz.save_png(viz.to_uint8(img), os.path.join(FLAGS.out_dir, name), FLAGS.scale)
        print(f"wrote {len(images)} images to {FLAGS.out_dir}")
    _insight_outputs(G, variables, seeds, psis, None if classes is None else classes[0])


def _classes(G, text):
    """None (unconditional G) or the classes to sample, from --class; errors end the command in one line."""
    n = G.cfg.num_classes
    if text is not None and n and text.strip().lower() == "all":
        return list(range(n))
    try:
        label = None if text is None else int(text)
    except ValueError:
        raise SystemExit(f"ganjax sample: --class {text!r} is not a class index or 'all'") from None
    try:
        label = sampling.check_class(G, label)
    except ValueError as e:
        raise SystemExit(f"ganjax sample: --class: {e}") from None
    return None if label is None else [label]


def _insight_outputs(G, variables, seeds, psis, label):
    common = dict(noise_mode=FLAGS.noise_mode, batch_size=FLAGS.batch_size, label=label)
    if FLAGS.attention:
        try:
            images, attn = insight.attention(G, variables, seeds, psi=FLAGS.psi, **common)
        except ValueError as e:
            raise SystemExit(f"ganjax sample --attention: {e}") from None
        viz.save_png(viz.attention_overlay_grid(images, attn, FLAGS.alpha), FLAGS.attention, FLAGS.scale)
        print(f"wrote attention overlays ({len(seeds)} seeds x {attn.shape[2]} layers) to {FLAGS.attention}")
    if FLAGS.variation:
        table = insight.latent_variation(G, variables, seeds[0], FLAGS.variations, psi=FLAGS.psi, **common)
        viz.save_png(viz.table_grid(table), FLAGS.variation, FLAGS.scale)
        print(f"wrote per-latent variation of seed {seeds[0]} ({len(table)} components) to {FLAGS.variation}")
    if FLAGS.truncation:
        table = insight.truncation_sweep(G, variables, seeds, psis, **common)
        viz.save_png(viz.table_grid(table), FLAGS.truncation, FLAGS.scale)
        print(f"wrote a truncation sweep (psi {psis}) to {FLAGS.truncation}")
    if FLAGS.interpolation:
        frames = insight.interpolation(G, variables, seeds, FLAGS.frames, method=FLAGS.interp, psi=FLAGS.psi,
                                       **common)
        viz.save_gif(frames, FLAGS.interpolation, fps=FLAGS.fps, scale=FLAGS.scale)
        print(f"wrote a {FLAGS.frames}-frame {FLAGS.interp} interpolation to {FLAGS.interpolation}")
