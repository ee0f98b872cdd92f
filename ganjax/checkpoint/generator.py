"""Generator-only inference checkpoints: export G_ema from a training run, load a generator from either kind.

An exported checkpoint is an Orbax directory with two items:
  generator  {'params': G_ema params, 'buffers': G_ema buffers (w_avg, const noise)}
  config     the run's resolved config (JSON)
It carries no discriminator or optimizer state, so it is what `ganjax sample` / `ganjax eval` and users need.
"""

import os
import sys
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp
from flax import linen as nn

from ganjax.checkpoint.trees import CheckpointError, check_compatible, config_to_dict, describe_read_error
from ganjax.models import ModelConfig, build_models
from ganjax.models.mapping import example_labels

CHECKPOINTS_SUBDIR = "checkpoints"


def _checkpointer(**items):
    """An Orbax Checkpointer for the named items, e.g. generator=(ocp.args.StandardSave,); config is JSON, and
    so are a training checkpoint's loader and metrics_history (registered, never read here, so Orbax does not
    warn that it found items it could not restore)."""
    registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
    for name in ("config", "loader", "metrics_history"):
        items.setdefault(name, (ocp.args.JsonSave, ocp.args.JsonRestore))
    for name, arg_types in items.items():
        for arg_type in arg_types:
            registry.add(name, arg_type)
    return ocp.Checkpointer(ocp.CompositeCheckpointHandler(handler_registry=registry))


def resolve(path: str, step: int | None = None) -> tuple[str, str]:
    """('export' | 'train', directory of one checkpoint) for an exported generator, a training checkpoint
    step directory, a workdir/checkpoints directory or a workdir (the latest complete step, or `step`)."""
    return _candidates(path, step)[0]


def _candidates(path: str, step: int | None) -> list[tuple[str, str]]:
    """resolve's answer first, then, when it picked the latest step itself, the older complete steps, newest
    first: what a reader may fall back to when the latest is damaged."""
    path = os.path.abspath(path)
    if not os.path.isdir(path):
        raise CheckpointError(f"checkpoint {path} does not exist (or is not a directory)")
    if os.path.isdir(os.path.join(path, "generator")):
        return [("export", path)]
    if os.path.isdir(os.path.join(path, "state")):
        return [("train", path)]
    ckdir = os.path.join(path, CHECKPOINTS_SUBDIR) if os.path.isdir(os.path.join(path, CHECKPOINTS_SUBDIR)) else path
    steps = ocp.utils.checkpoint_steps(ckdir)  # finalized steps only, as CheckpointManager.all_steps
    if not steps:
        raise CheckpointError(f"no checkpoint found at {path}: expected an exported generator, a training "
                              f"checkpoint step directory, a checkpoints directory or a workdir")
    if step is None:
        return [("train", os.path.join(ckdir, str(s))) for s in sorted(steps, reverse=True)]
    if step not in steps:
        raise CheckpointError(f"checkpoint step {step} not found in {ckdir} (complete steps: {sorted(steps)})")
    return [("train", os.path.join(ckdir, str(step)))]


def abstract_generator(config, sharding):
    """(G, ShapeDtypeStruct tree {'params', 'buffers'} with `sharding`) for the model section of `config`."""
    model_cfg = ModelConfig.from_config(config.model)
    model_cfg.validate()
    G, _ = build_models(model_cfg)
    z = jnp.zeros((1, model_cfg.num_latents, model_cfg.z_dim), jnp.float32)
    keys = {name: jax.random.key(0) for name in ("params", "noise", "dropout", "mixing")}
    shapes = jax.eval_shape(lambda: nn.meta.unbox(G.init(keys, z, labels=example_labels(model_cfg))))
    tree = {"params": shapes["params"], "buffers": shapes.get("buffers", {})}
    return G, jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def _read_config(kind: str, directory: str) -> ml_collections.ConfigDict:
    ckptr = _checkpointer()
    restored = ckptr.restore(directory, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
    ckptr.close()
    if not restored["config"]:
        raise CheckpointError(f"{kind} checkpoint {directory} holds no config")
    return ml_collections.ConfigDict(restored["config"])


def _restore_variables(kind: str, directory: str, target):
    restore_args = jax.tree.map(lambda s: ocp.ArrayRestoreArgs(sharding=s.sharding), target)
    if kind == "export":
        ckptr = _checkpointer(generator=(ocp.args.StandardRestore,))
        saved = ckptr.metadata(directory).item_metadata["generator"]
        check_compatible(saved, target, f"exported generator {directory}")
        args = ocp.args.Composite(generator=ocp.args.StandardRestore(target))
        variables = ckptr.restore(directory, args=args)["generator"]
    else:
        # Only G_ema is read from the training state (partial restore skips D and the optimizer states).
        ckptr = _checkpointer(state=(ocp.args.PyTreeRestore,))
        saved = ckptr.metadata(directory).item_metadata["state"]
        item = {"g_ema_params": target["params"], "g_ema_buffers": target["buffers"]}
        saved_g = {name: saved[name] if name in saved else {} for name in item}
        check_compatible(saved_g, item, f"training checkpoint {directory}")
        restore_args = {"g_ema_params": restore_args["params"], "g_ema_buffers": restore_args["buffers"]}
        item = {k: v for k, v in item.items() if jax.tree.leaves(v)}  # no empty subtrees (e.g. no buffers)
        args = ocp.args.PyTreeRestore(item=item, restore_args={k: restore_args[k] for k in item},
                                      partial_restore=True)
        state = ckptr.restore(directory, args=ocp.args.Composite(state=args))["state"]
        variables = {"params": state["g_ema_params"], "buffers": state.get("g_ema_buffers", {})}
    ckptr.close()
    return variables


class LoadedGenerator(NamedTuple):
    G: nn.Module
    variables: dict  # {'params', 'buffers'}
    config: ml_collections.ConfigDict
    kind: str  # 'export' | 'train'
    directory: str  # the checkpoint read


def open_generator(path: str, *, step: int | None = None, sharding=None) -> LoadedGenerator:
    """The generator of an exported generator, a training checkpoint step directory, a checkpoints directory
    or a workdir. Arrays land on `sharding` (default: the first local device); `step` picks a training step
    instead of the latest.

    A checkpoint whose files cannot be read (truncated, missing) is an error naming it and the damaged array;
    when the latest step of a workdir was picked (no `step`), the next older step is read instead, with a
    message: a reader leaves the workdir as it is (a training resume moves the damaged step aside)."""
    candidates = _candidates(path, step)
    sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    for i, (kind, directory) in enumerate(candidates):
        try:
            config = _read_config(kind, directory)
            G, target = _model_of(config, sharding)
            return LoadedGenerator(G, _restore_variables(kind, directory, target), config, kind, directory)
        except CheckpointError:
            raise  # a checkpoint of another model, or none: not damage
        except _ModelError as e:
            raise e.__cause__ from None
        except Exception as e:  # noqa: BLE001 - what Orbax/TensorStore raise for unreadable files varies
            damage = describe_read_error(e)
            if i + 1 == len(candidates):
                hint = ("no older complete checkpoint to fall back to" if len(candidates) > 1 else
                        "pick another step (--step) or checkpoint")
                raise CheckpointError(f"checkpoint {directory} is damaged: {damage}; {hint}") from None
            print(f"checkpoint {directory} is damaged ({damage}); reading {candidates[i + 1][1]} instead",
                  file=sys.stderr, flush=True)
    raise AssertionError("unreachable: _candidates returns at least one checkpoint")


class _ModelError(Exception):
    """Building the model a checkpoint's config names failed (its __cause__): the config's problem, not
    damage of the files."""


def _model_of(config, sharding):
    """abstract_generator, whose failures are _ModelError: a bad model config is not damage."""
    try:
        return abstract_generator(config, sharding)
    except Exception as e:
        raise _ModelError() from e


def load_generator(path: str, *, step: int | None = None, sharding=None):
    """(G, variables {'params', 'buffers'}, config): open_generator without where it was read from."""
    return open_generator(path, step=step, sharding=sharding)[:3]


def export_generator(source: str, out: str, *, step: int | None = None) -> str:
    """Write G_ema (params + buffers) and the config of a training checkpoint to the directory `out`."""
    out = os.path.abspath(out)
    if os.path.exists(out):
        raise CheckpointError(f"export destination {out} already exists; choose a new path")
    parent = os.path.dirname(out)
    if not os.access(parent, os.W_OK) or not os.path.isdir(parent):
        raise CheckpointError(f"cannot write the export {out}: {parent} is not a writable directory")
    _, variables, config = load_generator(source, step=step)
    ckptr = _checkpointer(generator=(ocp.args.StandardSave,))
    args = ocp.args.Composite(generator=ocp.args.StandardSave(variables),
                              config=ocp.args.JsonSave(config_to_dict(config)))
    ckptr.save(out, args=args)
    ckptr.close()
    return out
