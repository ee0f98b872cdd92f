"""`ganjax <command> [flags]`: one entry point, one module per subcommand.

Each subcommand lives in `ganjax/commands/<name>.py` and defines its own absl flags plus
`main(argv)`. Only the chosen module is imported (COMMANDS names them): a command module defines its absl
flags when imported, several define the same names (--config, --workdir, --out), and each command's `--help`
lists its own flags; `ganjax plan` also sets libtpu's environment before anything imports JAX.
"""

import difflib
import importlib
import importlib.util
import sys
from typing import TYPE_CHECKING

from absl import app, flags

from ganjax.config import ConfigError, base_config

if TYPE_CHECKING:  # the subcommand modules, for readers and import-graph tools; main() imports the chosen one
    import ganjax.commands.bench
    import ganjax.commands.convert
    import ganjax.commands.data
    import ganjax.commands.eval
    import ganjax.commands.export
    import ganjax.commands.info
    import ganjax.commands.plan
    import ganjax.commands.report
    import ganjax.commands.sample
    import ganjax.commands.sweep
    import ganjax.commands.train  # noqa: F401

COMMANDS = {
    "train": "train a GAN (resumes from the workdir's latest checkpoint)",
    "sample": "generate images, attention overlays, interpolations from a checkpoint",
    "eval": "FID / KID / precision-recall of a checkpoint",
    "bench": "step time, img/s, FLOPs, MFU, memory and communication of a config",
    "plan": "compile for a TPU slice on this host: HBM fit, roofline step time, cost of a run",
    "sweep": "run (or print) a sweep defined by a config's get_sweep()",
    "report": "a scaling study's report: FID against compute, the frontier, fitted laws",
    "data": "prepare or show a dataset",
    "export": "write a generator-only inference checkpoint",
    "convert": "import external weights (FID Inception, released GANsformer models)",
    "info": "parameter counts and layer layout of a config, without materialising weights",
}


def available():
    """The commands whose module exists in this installation (pieces land one by one)."""
    return [n for n in COMMANDS if importlib.util.find_spec(f"ganjax.commands.{n}") is not None]


def usage() -> str:
    lines = ["usage: ganjax <command> [flags]   (ganjax <command> --help for its flags)", "", "commands:"]
    lines += [f"  {name:<8} {COMMANDS[name]}" for name in available()]
    return "\n".join(lines)


def override_problems(args) -> list[str]:
    """`--config.<path>=value` overrides whose path is not a field of the config schema (ganjax.config), each
    with the nearest field; found before absl parses them (which fails with a bare AttributeError)."""
    problems = []
    for arg in args:
        if not arg.startswith("--config."):
            continue
        path = arg[len("--config."):].split("=", 1)[0]
        node, walked = base_config(), []
        for key in path.split("."):
            if not hasattr(node, "keys") or key not in node:
                options = list(node.keys()) if hasattr(node, "keys") else []
                near = difflib.get_close_matches(key, options, n=1)
                where = ".".join(["config", *walked])
                problems.append(f"--config.{path}: {where} has no field {key!r}"
                                + (f" (did you mean {near[0]!r}?)" if near else ""))
                break
            node, walked = node[key], walked + [key]
    return problems


def main(argv=None):
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
        print(usage())
        sys.exit(0 if len(argv) >= 2 else 2)
    name = argv[1]
    if name not in available():
        print(f"ganjax: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        sys.exit(2)
    module = importlib.import_module(f"ganjax.commands.{name}")
    # config_flags reads `--config.<field>` overrides from sys.argv, so it must be the argv parsed here
    # (matters when main() is called with an explicit argv).
    sys.argv = [f"ganjax {name}"] + argv[2:]
    # Libraries (Orbax, JAX, TFDS) log every step at INFO through absl: show warnings and errors only,
    # unless the user asks for more (-v / --verbosity).
    if not any(a.startswith(("-v", "--verbosity")) for a in argv[2:]):
        sys.argv.append("--verbosity=-1")
    # absl's --help lists the flags of the module named sys.argv[0] under the __main__ docstring:
    # make those the command module's flags and docstring.
    for flag in flags.FLAGS.flags_by_module_dict().get(module.__name__, []):
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
    sys.modules["__main__"].__doc__ = module.__doc__
    problems = override_problems(argv[2:])
    if problems:
        print("\n".join(f"ganjax {name}: {p}" for p in problems), file=sys.stderr)
        sys.exit(2)
    try:
        app.run(module.main, argv=sys.argv)
    except ConfigError as e:  # a wrong value: the message names every field, a traceback adds nothing
        print(f"ganjax {name}: invalid config:\n{e}", file=sys.stderr)
        sys.exit(2)
    except SystemExit as e:
        # absl exits 1 after printing --help; asking for help is not a failure.
        if e.code == 1 and set(argv[2:]) & {"-h", "-?", "--help", "--helpshort", "--helpfull"}:
            sys.exit(0)
        raise


if __name__ == "__main__":
    main()
