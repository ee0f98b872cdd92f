"""`ganjax_shapes`: the embedded procedural scene dataset (scenes.py) as a TFDS builder.

No download: `download_and_prepare()` renders the scenes and writes array_record files (random access for
Grain). Each configuration (resolution, image counts, seed, object range) is its own TFDS config, named
from its values, so several coexist in one data dir and a prepared one is reused.
"""

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from ganjax.data import scenes
from ganjax.data.preprocess import encode_png

_RENDER_CHUNK = 256  # images rendered per vectorised call while writing


@dataclasses.dataclass(eq=False, kw_only=True)
class ShapesConfig(tfds.core.BuilderConfig):
    resolution: int = 32
    num_images: int = 10000
    num_test_images: int = 1000
    seed: int = 0
    min_objects: int = 2
    max_objects: int = 8

    @classmethod
    def make(cls, resolution=32, num_images=10000, num_test_images=None, seed=0, min_objects=2,
             max_objects=8) -> "ShapesConfig":
        """A config named from its values; the test split defaults to a tenth of the train split."""
        if num_test_images is None:
            num_test_images = max(1, num_images // 10)
        name = f"r{resolution}_n{num_images}_t{num_test_images}_s{seed}_o{min_objects}-{max_objects}"
        cfg = cls(name=name, resolution=resolution, num_images=num_images, num_test_images=num_test_images,
                  seed=seed, min_objects=min_objects, max_objects=max_objects,
                  description=f"{num_images} procedural scenes at {resolution}x{resolution}")
        cfg.validate()
        return cfg

    def validate(self):
        r = self.resolution
        if not (16 <= r <= 256 and r & (r - 1) == 0):
            raise ValueError(f"model.resolution: the shapes dataset needs a power of two in 16..256 (got {r})")
        if self.num_images < 1 or self.num_test_images < 1:
            raise ValueError(f"data.num_images: must be >= 1 (got {self.num_images} train, {self.num_test_images} test)")
        scenes.SceneSpec(self.min_objects, self.max_objects).validate()


class GanjaxShapes(tfds.core.GeneratorBasedBuilder):
    """CLEVR-like 2-D scenes: 2-8 shaded objects (4 shapes, 8 colours, 3 sizes, 2 materials) with shadows."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = [ShapesConfig.make(resolution=r) for r in (16, 32, 64, 128, 256)]

    def _info(self) -> tfds.core.DatasetInfo:
        r, k = self.builder_config.resolution, self.builder_config.max_objects
        per_object = tfds.features.Tensor(shape=(k,), dtype=np.int32)
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(r, r, 3), encoding_format="png"),
                "num_objects": tfds.features.Scalar(dtype=np.int32),
                # back to front, -1 padded on the left; indices into scenes.SHAPES/COLORS/SIZES/MATERIALS
                "shape": per_object,
                "color": per_object,
                "size": per_object,
                "material": per_object,
            }),
            supervised_keys=None,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        cfg = self.builder_config
        return {
            "train": self._generate_examples("train", cfg.num_images),
            "test": self._generate_examples("test", cfg.num_test_images),
        }

    def _generate_examples(self, split, count):
        cfg = self.builder_config
        spec = scenes.SceneSpec(cfg.min_objects, cfg.max_objects)
        for start in range(0, count, _RENDER_CHUNK):
            idx = np.arange(start, min(count, start + _RENDER_CHUNK))
            images, meta = scenes.render(cfg.seed, split, idx, cfg.resolution, spec)
            for j, i in enumerate(idx):
                example = {key: value[j] for key, value in meta.items()}
                example["image"] = encode_png(images[j])
                yield int(i), example


def make_builder(config: ShapesConfig, data_dir=None) -> GanjaxShapes:
    # TFDS refuses a config object that duplicates a listed one; the listed ones are passed by name.
    listed = {c.name for c in GanjaxShapes.BUILDER_CONFIGS}
    return GanjaxShapes(config=config.name if config.name in listed else config, data_dir=data_dir,
                        file_format="array_record")
