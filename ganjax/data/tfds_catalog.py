"""TFDS catalog datasets (cifar10, clevr, lsun/bedroom, celeb_a_hq, ...) at the model resolution.

The catalog dataset itself is prepared as TFDS defines it (array_record, in the user's data dir); then the
`ganjax_catalog` builder writes a derived copy of one split with GANsformer's preprocessing at the model
resolution, so training decodes small images instead of resizing large ones every epoch. Preparing some
catalog datasets needs TensorFlow (their generators encode images with tf); that is reported as an error
naming the extra to install.
"""

import concurrent.futures
import dataclasses
import difflib
import os
import re

import PIL.Image
import tensorflow_datasets as tfds

from ganjax.data import labels as labels_lib
from ganjax.data import preprocess

EXAMPLES = ("cifar10", "clevr", "lsun/bedroom", "celeb_a_hq/256", "ffhq")
_THREADS = min(8, os.cpu_count() or 1)
_WINDOW = 256


def unknown_dataset_error(name: str, builtin: tuple[str, ...]) -> ValueError:
    names = tfds.list_builders(with_community_datasets=False)
    close = difflib.get_close_matches(name.split("/")[0].split(":")[0], names, n=5, cutoff=0.6)
    hint = f"; closest catalog names: {', '.join(close)}" if close else ""
    return ValueError(
        f"data.dataset: unknown dataset {name!r}. Allowed: {', '.join(repr(b) for b in builtin)}, or a TFDS "
        f"catalog name[/config] such as {', '.join(EXAMPLES)} ({len(names)} names; list them with "
        f"`python -c 'import tensorflow_datasets as tfds; print(tfds.list_builders())'`){hint}")


def source_builder(name: str, data_dir, builtin: tuple[str, ...]):
    """The catalog builder for `name`; unknown names raise unknown_dataset_error."""
    try:
        return tfds.builder(name, data_dir=data_dir, file_format="array_record")
    except tfds.core.registered.DatasetNotFoundError:
        raise unknown_dataset_error(name, builtin) from None
    except ValueError as e:  # e.g. an unknown config of a known dataset ("lsun/kitchenette")
        raise ValueError(f"data.dataset: {name!r}: {e}") from None


def _needs_tensorflow(e: BaseException) -> bool:
    while e is not None:
        if isinstance(e, ImportError) and "tensorflow" in str(e):
            return True
        e = e.__cause__ or e.__context__
    return False


def prepare_source(builder, name: str):
    """download_and_prepare the catalog dataset as array_record; clear errors for TF and format problems."""
    if builder.is_prepared():
        formats = builder.info.available_file_formats()
        if not formats & set(tfds.core.FileFormat.with_random_access()):
            raise ValueError(
                f"data.dataset: {name!r} is prepared in {builder.data_dir} as {', '.join(f.value for f in formats)}"
                f"; Grain needs random access (array_record). Convert it with `tfds convert_format "
                f"--dataset_version_dir {builder.data_dir} --out_file_format array_record` or use another "
                f"data.data_dir")
        return
    try:
        builder.download_and_prepare()
    except Exception as e:
        if _needs_tensorflow(e):
            raise RuntimeError(
                f"data.dataset: preparing TFDS dataset {name!r} needs TensorFlow, which is not installed: "
                f"pip install 'ganjax[tf]' (only the one-off preparation uses it)") from e
        raise


def image_key(features) -> str:
    """The first top-level image feature of a catalog dataset."""
    for key, feature in features.items():
        if isinstance(feature, tfds.features.Image):
            return key
    raise ValueError(f"data.dataset: the dataset has no image feature (features: {list(features)})")


@dataclasses.dataclass(eq=False, kw_only=True)
class CatalogConfig(tfds.core.BuilderConfig):
    source: str = ""
    source_split: str = "train"
    resolution: int = 256
    aspect_ratio: float = 1.0
    label: str = ""  # a ClassLabel feature of the source, kept as this dataset's 'label' ("" = none)
    classes: tuple = ()  # its class names

    @classmethod
    def make(cls, source: str, source_split: str, resolution: int, aspect_ratio: float = 1.0, label: str = "",
             classes: tuple = ()):
        slug = re.sub(r"[^a-z0-9.]+", "_", f"{source}_{source_split}".lower()).strip("_")
        name = f"{slug}_r{resolution}_a{aspect_ratio:g}"
        if label:
            name += "_" + re.sub(r"[^a-z0-9]+", "_", label.lower())
        return cls(name=name, source=source, source_split=source_split, resolution=resolution,
                   aspect_ratio=aspect_ratio, label=label, classes=tuple(classes),
                   description=f"{source} [{source_split}] at {resolution}x{resolution}")


class GanjaxCatalog(tfds.core.GeneratorBasedBuilder):
    """One split of a TFDS catalog dataset, GANsformer-preprocessed to a square power-of-two resolution."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = []

    def __init__(self, *, source_data_dir=None, **kwargs):
        self._source_data_dir = source_data_dir
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        cfg = self.builder_config
        return tfds.core.DatasetInfo(builder=self, description=__doc__,
                                     features=labels_lib.stored_features(cfg.resolution, cfg.label, cfg.classes))

    def _split_generators(self, dl_manager):
        del dl_manager
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        cfg = self.builder_config
        src_builder = tfds.builder(cfg.source, data_dir=self._source_data_dir, file_format="array_record")
        key = image_key(src_builder.info.features)
        src = src_builder.as_data_source(split=cfg.source_split)

        def load(i):
            example = src[i]
            image = example[key]
            pil = PIL.Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
            out = {"image": preprocess.encode_png(preprocess.preprocess(pil, cfg.resolution, cfg.aspect_ratio))}
            if cfg.label:
                out[labels_lib.STORED] = int(example[cfg.label])
            return out

        with concurrent.futures.ThreadPoolExecutor(_THREADS) as pool:
            for start in range(0, len(src), _WINDOW):
                idx = range(start, min(len(src), start + _WINDOW))
                yield from zip(idx, pool.map(load, idx))


def make_builder(config: CatalogConfig, data_dir=None) -> GanjaxCatalog:
    return GanjaxCatalog(config=config, data_dir=data_dir, source_data_dir=data_dir, file_format="array_record")
