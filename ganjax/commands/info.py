"""`ganjax info --config configs/gansformer.py:ffhq256 [--json]`: parameter counts (G mapping, G synthesis,
G total, D), num_ws and the attention layers of a config, from abstract shapes (no weights are built)."""

import json

from absl import flags
from ml_collections import config_flags

from ganjax.models import ModelConfig
from ganjax.models.summary import summarize

config_flags.DEFINE_config_file("config", None, "config file and preset, e.g. configs/gansformer.py:ffhq256")
flags.DEFINE_bool("json", False, "print one JSON object instead of a table")
FLAGS = flags.FLAGS


def format_table(info: dict) -> str:
    p = info["params"]
    lines = [
        f"resolution        {info['resolution']}",
        f"latents (k)       {info['num_latents']}",
        f"num_ws            {info['num_ws']}",
        f"G mapping         {p['G_mapping']:,}",
        f"G synthesis       {p['G_synthesis']:,}",
        f"G latent pos      {p['G_latent_pos']:,}",
        f"G total           {p['G_total']:,}",
        f"D                 {p['D']:,}",
        f"G buffers         {info['G_buffers']:,} (w_avg, const noise)",
        "channels          " + ", ".join(f"{r}:{c}" for r, c in info["channels"].items()),
        f"attention         {info['attention']} in {len(info['attention_layers'])} layers: "
        + (", ".join(info["attention_layers"]) or "-"),
    ]
    if info["d_attention_resolutions"]:
        lines.append("D attention at    " + ", ".join(map(str, info["d_attention_resolutions"])))
    return "\n".join(lines)


def main(argv):
    if len(argv) > 1:
        raise SystemExit(f"ganjax info: unexpected arguments {argv[1:]}")
    if FLAGS.config is None:
        raise SystemExit("ganjax info needs --config, e.g. --config configs/gansformer.py:ffhq256")
    try:
        cfg = ModelConfig.from_config(FLAGS.config.model).validate()
    except ValueError as e:
        raise SystemExit(f"ganjax info: config.{e}") from None
    info = summarize(cfg)
    print(json.dumps(info, indent=2) if FLAGS.json else format_table(info))
