"""`ganjax <command> [flags]`: one entry point, one module per subcommand.

Each subcommand lives in `ganjax/commands/<name>.py` and defines its own absl flags plus
`main(argv)`. Only the chosen module is imported, so each command's `--help` lists its own flags.
"""

import importlib
import sys

COMMANDS = {
    "train": "train a GAN (resumes from the workdir's latest checkpoint)",
    "sample": "generate images, attention overlays, interpolations from a checkpoint",
    "eval": "FID / KID / precision-recall of a checkpoint",
    "bench": "step time, img/s, FLOPs, MFU, memory and communication of a config",
    "sweep": "run (or print) a sweep defined by a config's get_sweep()",
    "data": "prepare or show a dataset",
    "export": "write a generator-only inference checkpoint",
    "convert": "import external weights (FID Inception, released GANsformer models)",
    "info": "parameter counts and layer layout of a config, without materialising weights",
}


def usage() -> str:
    lines = ["usage: ganjax <command> [flags]   (ganjax <command> --help for its flags)", "", "commands:"]
    lines += [f"  {name:<8} {text}" for name, text in COMMANDS.items()]
    return "\n".join(lines)


def main(argv=None):
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
        print(usage())
        return 0 if len(argv) >= 2 else 2
    name = argv[1]
    if name not in COMMANDS:
        print(f"ganjax: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        sys.exit(2)
    module = importlib.import_module(f"ganjax.commands.{name}")
    from absl import app

    app.run(module.main, argv=[f"ganjax {name}"] + argv[2:])


if __name__ == "__main__":
    main()
