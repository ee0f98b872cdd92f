"""`ganjax_folder`: a user's folder of images (recursive; jpg/png/webp) as a TFDS builder.

Each image gets GANsformer's preprocessing (preprocess.py) and is stored at the model resolution in
array_record files. The config name carries a fingerprint of the folder listing (paths, sizes, mtimes), so
adding or editing files gives a new dataset instead of silently reusing a stale one. A file that PIL cannot
decode (corrupt, truncated, not an image) is skipped with a warning naming it, and the count is logged at
the end; it never stops the preparation or becomes a wrong image.
"""

import concurrent.futures
import dataclasses
import hashlib
import os
import re

from absl import logging
import PIL.Image
import tensorflow_datasets as tfds

from ganjax.data import labels as labels_lib
from ganjax.data import preprocess

EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
_THREADS = min(8, os.cpu_count() or 1)  # PIL decodes and resizes outside the GIL
_WINDOW = 256  # files decoded ahead of the writer


def list_images(folder: str) -> list[str]:
    """Image files under `folder` (recursive, sorted, case-insensitive extensions); errors name the folder."""
    if not folder:
        raise ValueError("data.folder: dataset 'folder' needs data.folder set to a directory of images")
    if not os.path.isdir(folder):
        raise ValueError(f"data.folder: {folder!r} is not a directory")
    files = []
    for root, dirs, names in os.walk(folder, followlinks=True):
        dirs.sort()
        files += [os.path.join(root, n) for n in sorted(names) if n.lower().endswith(EXTENSIONS)]
    if not files:
        raise ValueError(f"data.folder: no images ({', '.join(EXTENSIONS)}) found under {folder!r}")
    return files


def fingerprint(folder: str, files: list[str], extra: bytes = b"") -> str:
    h = hashlib.sha256()
    for f in files:
        st = os.stat(f)
        h.update(f"{os.path.relpath(f, folder)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    h.update(extra)
    return h.hexdigest()[:12]


@dataclasses.dataclass(eq=False, kw_only=True)
class FolderConfig(tfds.core.BuilderConfig):
    folder: str = ""
    resolution: int = 256
    aspect_ratio: float = 1.0
    label: str = ""  # "" (no labels) or one of labels.FOLDER_LABELS
    classes: tuple = ()  # the class names, with a label

    @classmethod
    def make(cls, folder: str, resolution: int, aspect_ratio: float = 1.0, label: str = "") -> "FolderConfig":
        files = list_images(folder)  # checks first: abspath("") would be the working directory
        folder = os.path.abspath(folder)
        files = [os.path.abspath(f) for f in files]
        classes = labels_lib.folder_classes(folder, files, label)[0] if label else ()
        extra = labels_lib.labels_file_digest(folder) if label == "dataset.json" else b""
        slug = re.sub(r"[^a-z0-9]+", "_", os.path.basename(folder.rstrip(os.sep)).lower()).strip("_") or "root"
        name = f"{slug}_{fingerprint(folder, files, extra)}_r{resolution}_a{aspect_ratio:g}"
        if label:
            name += "_" + re.sub(r"[^a-z0-9]+", "_", label.lower())
        return cls(name=name, folder=folder, resolution=resolution, aspect_ratio=aspect_ratio, label=label,
                   classes=classes, description=f"{len(files)} files from {folder}")


def _load(path: str, resolution: int, aspect_ratio: float):
    """Decoded, preprocessed image, or the reason it could not be read."""
    try:
        with PIL.Image.open(path) as img:
            img.load()  # raises on truncated or corrupt data (PIL refuses truncated files by default)
            return preprocess.preprocess(img, resolution, aspect_ratio), None
    except (OSError, ValueError, SyntaxError, PIL.Image.DecompressionBombError) as e:
        return None, f"{type(e).__name__}: {e}"


class GanjaxFolder(tfds.core.GeneratorBasedBuilder):
    """Images from a local folder, cropped to an aspect ratio, padded to square and resized."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = []

    def _info(self) -> tfds.core.DatasetInfo:
        cfg = self.builder_config
        # path: relative to the folder, to trace an image back
        features = labels_lib.stored_features(cfg.resolution, cfg.label, cfg.classes, path=tfds.features.Text())
        return tfds.core.DatasetInfo(builder=self, description=__doc__, features=features)

    def _split_generators(self, dl_manager):
        del dl_manager
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        cfg = self.builder_config
        files = list_images(cfg.folder)
        classes = labels_lib.folder_classes(cfg.folder, files, cfg.label)[1] if cfg.label else {}
        skipped = 0
        with concurrent.futures.ThreadPoolExecutor(_THREADS) as pool:
            results = (r for start in range(0, len(files), _WINDOW)  # bounded: never all images in memory
                       for r in pool.map(lambda f: _load(f, cfg.resolution, cfg.aspect_ratio),
                                         files[start:start + _WINDOW]))
            for path, (image, error) in zip(files, results):
                rel = os.path.relpath(path, cfg.folder)
                if image is None:
                    skipped += 1
                    logging.warning("ganjax_folder: skipping unreadable image %s (%s)", path, error)
                    continue
                example = {"image": preprocess.encode_png(image), "path": rel}
                if cfg.label:
                    example[labels_lib.STORED] = classes[rel]
                yield rel, example
        if skipped:
            logging.warning("ganjax_folder: skipped %d of %d files under %s", skipped, len(files), cfg.folder)
        if skipped == len(files):
            raise ValueError(f"data.folder: none of the {len(files)} image files under {cfg.folder!r} could be read")


def make_builder(config: FolderConfig, data_dir=None) -> GanjaxFolder:
    return GanjaxFolder(config=config, data_dir=data_dir, file_format="array_record")

