"""The dataset sources `config.data.dataset` can name, and every rule that depends on which one it is.

SOURCES holds the sources made here (a TFDS builder of ganjax's own: the embedded scenes, an image folder);
any other name is a TFDS catalog dataset, resized into a derived copy (tfds_catalog.py). Each source says its
splits, the fields it needs, the class labels it offers and how a label is read, so the config check, the
data check before preparing, the loader and the class counts all read it here; a new source is its builder
module plus one entry.
"""

import dataclasses
import operator
from typing import Callable

import ml_collections

from ganjax.data import labels, tfds_folder, tfds_shapes


@dataclasses.dataclass(frozen=True)
class Source:
    what: str                          # how messages name it
    splits: tuple[str, ...]
    labels: tuple[str, ...]            # the data.label names it offers
    make_builder: Callable             # (config.data, resolution, data_dir) -> its TFDS builder, not prepared
    required: dict = dataclasses.field(default_factory=dict)  # config.data field -> what it must name
    # label -> class count, known without files (None: read from the prepared dataset's labels.STORED feature)
    label_count: Callable | None = None
    # label -> (example -> class) (None: the stored labels.STORED feature)
    label_reader: Callable | None = None


def _shapes_builder(d, resolution, data_dir):
    return tfds_shapes.make_builder(tfds_shapes.ShapesConfig.make(resolution, d.num_images), data_dir)


def _folder_builder(d, resolution, data_dir):
    return tfds_folder.make_builder(tfds_folder.FolderConfig.make(d.folder, resolution, d.aspect_ratio, d.label),
                                    data_dir)


SOURCES = {
    "shapes": Source("the shapes dataset", ("train", "test"), tuple(labels.SHAPES_LABELS), _shapes_builder,
                     label_count=lambda label: labels.SHAPES_LABELS[label][0],
                     label_reader=lambda label: labels.SHAPES_LABELS[label][1]),
    "folder": Source("an image folder", ("train",), labels.FOLDER_LABELS, _folder_builder,
                     required={"folder": "an image folder"}),
}
CATALOG_LABELS = "a ClassLabel feature of the dataset, e.g. 'label'"


def problems(config: ml_collections.ConfigDict) -> list[str]:
    """What is wrong with config.data's source fields and its label (with model.num_classes), as far as no
    file is needed; each names its field (config.data.<field>: ...)."""
    d, out = config.data, []
    source = SOURCES.get(d.dataset)
    if source is not None:
        out += [f"config.data.{field}: must name {what} when config.data.dataset={d.dataset!r}"
                for field, what in source.required.items() if not d[field]]
        if d.split not in source.splits:
            out.append(f"config.data.split: {d.split!r} is not one of {source.splits} ({source.what})")
    return out + label_problems(d.dataset, d.label, int(config.model.num_classes))


def label_problems(dataset: str, label: str, num_classes: int) -> list[str]:
    """What is wrong with (data.dataset, data.label, model.num_classes), as far as no file is needed."""
    if not label and num_classes == 0:
        return []
    if not label:
        return [f"config.data.label: model.num_classes={num_classes} makes the model conditional, but no label "
                f"is named; set data.label ({allowed_labels(dataset)}) or model.num_classes=0"]
    if num_classes == 0:
        return [f"config.model.num_classes: data.label={label!r} asks for labels, but the model is unconditional "
                f"(0 classes); set model.num_classes to the label's class count"]
    source = SOURCES.get(dataset)
    if source is None:
        return []  # a catalog dataset: its ClassLabel features are checked when it is opened
    if label not in source.labels:
        return [f"config.data.label: {label!r} is not a label of {source.what} ({allowed_labels(dataset)})"]
    count = source.label_count(label) if source.label_count else None
    if count is not None and num_classes != count:
        return [f"config.model.num_classes: {num_classes}, but the {dataset} label {label!r} has {count} classes"]
    return []


def allowed_labels(dataset: str) -> str:
    source = SOURCES.get(dataset)
    if source is None:
        return CATALOG_LABELS
    return "one of " + ", ".join(repr(n) for n in source.labels)


def builder(config: ml_collections.ConfigDict, data_dir):
    """The TFDS builder of a source made here (None for a catalog name)."""
    source = SOURCES.get(config.data.dataset)
    return None if source is None else source.make_builder(config.data, config.model.resolution, data_dir)


def label_reader(dataset: str, label: str):
    """example -> int class, for the prepared dataset's examples."""
    source = SOURCES.get(dataset)
    if source is not None and source.label_reader is not None:
        return source.label_reader(label)
    return operator.itemgetter(labels.STORED)


def dataset_classes(dataset: str, label: str, builder) -> int:
    """The number of classes of the label in a prepared builder."""
    source = SOURCES.get(dataset)
    if source is not None and source.label_count is not None:
        return source.label_count(label)
    features = builder.info.features
    if labels.STORED not in features.keys():
        raise ValueError(f"data.label: the prepared dataset {builder.info.full_name} has no {labels.STORED!r} "
                         f"feature")
    return int(features[labels.STORED].num_classes)


def check_class_count(config: ml_collections.ConfigDict, builder):
    """model.num_classes must be the class count of data.label in the prepared `builder` (an error naming both)."""
    d, n = config.data, int(config.model.num_classes)
    have = dataset_classes(d.dataset, d.label, builder)
    if have != n:
        raise ValueError(f"model.num_classes: {n}, but the label {d.label!r} of {builder.info.full_name} has "
                         f"{have} classes")
