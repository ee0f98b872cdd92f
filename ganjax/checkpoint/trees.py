"""Checkpoint pytrees by name: the compatibility check run before a restore, and JSON conversion."""

import json
import re

import jax
import numpy as np


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written or does not fit the model it is restored into."""


def describe_read_error(e: Exception) -> str:
    """The first line of an error reading a checkpoint's files, with the array it names when TensorStore
    says which (its raw message runs to kilobytes of spec JSON). Of the chain of causes (Orbax wraps
    TensorStore's error in its own), the one that names the array is described."""
    chain = [e]
    while chain[-1].__cause__ is not None or chain[-1].__context__ is not None:
        chain.append(chain[-1].__cause__ or chain[-1].__context__)
    lines = [str(x).strip().splitlines()[0] if str(x).strip() else type(x).__name__ for x in chain]
    pattern = r'Error (?:reading|opening) "?([\w.\-/]+?)(?:/\.zarray|/\d[\d.]*)?"? in OCDBT'
    text = next((line for line in lines if re.search(pattern, line)), lines[0])
    m = re.search(pattern, text)
    text = text.split(" [tensorstore_spec")[0]  # the spec that follows is kilobytes of JSON
    short = text if len(text) <= 400 else f"{text[:100]} ... {text[-280:]}"  # the cause is at the end
    return f"array {m.group(1)!r}: {short}" if m else short


def _key_name(entry) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def flatten_with_names(tree) -> dict:
    """{'a/b/c': leaf} for any pytree (dicts, dataclasses, lists); names match Orbax's metadata tree."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: x is None)
    return {"/".join(_key_name(k) for k in path): leaf for path, leaf in leaves if leaf is not None}


def check_compatible(saved_tree, target_tree, what: str):
    """Raise CheckpointError naming the first parameter whose presence, shape or dtype differs.

    `saved_tree` is Orbax metadata (leaves with .shape/.dtype); `target_tree` holds arrays or
    ShapeDtypeStructs. Checked before restoring, because Orbax's own error for this is a deep stack trace.
    """
    saved = flatten_with_names(saved_tree)
    target = flatten_with_names(target_tree)
    for name, want in target.items():
        if name not in saved:
            raise CheckpointError(
                f"{what}: parameter {name!r} (shape {tuple(want.shape)}) is not in the checkpoint; "
                f"the checkpoint was written by a different architecture/config"
            )
        have = saved[name]
        if tuple(have.shape) != tuple(want.shape) or np.dtype(have.dtype) != np.dtype(want.dtype):
            raise CheckpointError(
                f"{what}: parameter {name!r} has shape {tuple(have.shape)} {np.dtype(have.dtype)} in the "
                f"checkpoint but {tuple(want.shape)} {np.dtype(want.dtype)} in the model being restored; "
                f"the checkpoint was written by a different architecture/config"
            )
    extra = [name for name in saved if name not in target]
    if extra:
        raise CheckpointError(
            f"{what}: parameter {extra[0]!r} (shape {tuple(saved[extra[0]].shape)}) is in the checkpoint but "
            f"not in the model being restored ({len(extra)} such); a different architecture/config wrote it"
        )


def to_jsonable(x):
    """numpy/jax scalars and arrays in metric dicts -> plain Python, so they can be written as JSON."""
    if isinstance(x, dict):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_jsonable(v) for v in x]
    if isinstance(x, (np.ndarray, np.generic, jax.Array)):
        return np.asarray(x).tolist()
    return x


def config_to_dict(config) -> dict:
    """A ConfigDict (or plain dict) as a JSON-safe dict."""
    if hasattr(config, "to_json_best_effort"):
        return json.loads(config.to_json_best_effort())
    return json.loads(json.dumps(config, default=str))
