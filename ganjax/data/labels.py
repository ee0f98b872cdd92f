"""Class labels for conditional training: which label `data.label` names for each dataset kind, how many
classes it has, and how an example's label is read.

- shapes (the embedded scenes): a label derived from the metadata every scene is stored with, so nothing
  is re-rendered: 'num_objects' (2..8 objects -> classes 0..6), 'front_shape' (the nearest object's
  shape, scenes.SHAPES) or 'front_color' (its colour, scenes.COLORS).
- folder: 'subfolders' (every image lies under a top-level sub-folder; the sorted sub-folder names are the
  classes) or 'dataset.json' (a flat or any folder with StyleGAN2-ADA's labels file at its root,
  {"labels": [["relative/path.png", class_index], ...]}, one entry per image).
- a TFDS catalog dataset: the name of one of its ClassLabel features (e.g. 'label' for cifar10).
The folder and catalog builders store the label as their own 'label' feature (a ClassLabel with the
class names), so a prepared dataset says how many classes it has. Which labels a dataset offers, and the
checks and readers that depend on it, are in sources.py.
"""

import json
import os

import tensorflow_datasets as tfds

from ganjax.data import scenes

STORED = "label"  # the feature a folder or catalog dataset keeps its label in
_SCENES = scenes.SceneSpec()  # the object range the shapes dataset is rendered with (ShapesConfig.make)


# Module-level readers (not lambdas): Grain's worker processes (data.worker_count) pickle them.
def _num_objects(ex):
    return ex["num_objects"] - _SCENES.min_objects


def _front_shape(ex):
    return ex["shape"][-1]  # objects are stored back to front: slot -1 is the nearest


def _front_color(ex):
    return ex["color"][-1]


SHAPES_LABELS = {  # name -> (number of classes, example -> class)
    "num_objects": (_SCENES.max_objects - _SCENES.min_objects + 1, _num_objects),
    "front_shape": (len(scenes.SHAPES), _front_shape),
    "front_color": (len(scenes.COLORS), _front_color),
}
FOLDER_LABELS = ("subfolders", "dataset.json")


def stored_features(resolution: int, label: str, classes, **extra) -> tfds.features.FeaturesDict:
    """What a folder or catalog dataset stores per example: the PNG image (resolution^2, RGB), the `extra`
    features, and with a label its classes as the ClassLabel feature STORED."""
    features = {"image": tfds.features.Image(shape=(resolution, resolution, 3), encoding_format="png"), **extra}
    if label:
        features[STORED] = tfds.features.ClassLabel(names=list(classes))
    return tfds.features.FeaturesDict(features)


# -- folders -----------------------------------------------------------------------------------------------

def folder_classes(folder: str, files: list[str], label: str) -> tuple[tuple[str, ...], dict[str, int]]:
    """(class names, {relative path: class}) of the images `files` under `folder`; errors name the file."""
    rel = [os.path.relpath(f, folder) for f in files]
    if label == "subfolders":
        top = [r.split(os.sep)[0] if os.sep in r else None for r in rel]
        loose = [r for r, t in zip(rel, top) if t is None]
        if loose:
            raise ValueError(f"data.label: 'subfolders' needs every image in a class sub-folder of {folder!r}; "
                             f"{len(loose)} lie at its top level (e.g. {loose[0]!r}); move them, or label them "
                             f"with a dataset.json and data.label='dataset.json'")
        names = tuple(sorted(set(top)))
        index = {n: i for i, n in enumerate(names)}
        return names, {r: index[t] for r, t in zip(rel, top)}
    if label == "dataset.json":
        path = os.path.join(folder, "dataset.json")
        try:
            with open(path) as f:
                entries = json.load(f)["labels"]
            table = {os.path.normpath(p): int(c) for p, c in entries}
        except FileNotFoundError:
            raise ValueError(f"data.label: 'dataset.json' names a labels file, but {path} does not exist") from None
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"data.label: {path} is not a labels file "
                             f'{{"labels": [["path", class], ...]}} ({type(e).__name__}: {e})') from None
        missing = [r for r in rel if r not in table]
        if missing:
            raise ValueError(f"data.label: {path} has no label for {len(missing)} image(s), e.g. {missing[0]!r}")
        labels = {r: table[r] for r in rel}
        if min(labels.values()) < 0:
            bad = min(labels, key=labels.get)
            raise ValueError(f"data.label: {path} gives {bad!r} the negative class {labels[bad]}")
        return tuple(str(i) for i in range(max(labels.values()) + 1)), labels
    raise ValueError(f"data.label: {label!r} is not a folder label (one of {', '.join(map(repr, FOLDER_LABELS))})")


def labels_file_digest(folder: str) -> bytes:
    """The bytes of the folder's dataset.json (empty when there is none), for the dataset's fingerprint."""
    try:
        with open(os.path.join(folder, "dataset.json"), "rb") as f:
            return f.read()
    except FileNotFoundError:
        return b""


# -- catalog datasets --------------------------------------------------------------------------------------

def catalog_classes(features, label: str, name: str) -> tuple[str, ...]:
    """The class names of a catalog dataset's ClassLabel feature `label`."""
    found = [k for k, f in features.items() if isinstance(f, tfds.features.ClassLabel)]
    feature = features[label] if label in features else None
    if not isinstance(feature, tfds.features.ClassLabel):
        have = f"its ClassLabel features: {', '.join(found)}" if found else "it has no ClassLabel feature"
        raise ValueError(f"data.label: {label!r} is not a class label of {name!r} ({have})")
    return tuple(feature.names)
