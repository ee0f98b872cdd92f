"""Presets load and validate; validate() names the wrong field and the allowed values; overrides parse."""

import importlib.util
import os

import ml_collections
import pytest
from absl import flags
from ml_collections import config_flags

from ganjax import presets
from ganjax.config import ConfigError, base_config, validate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILES = ("gansformer", "stylegan2")


def load(name):
    spec = importlib.util.spec_from_file_location(f"cfg_{name}", os.path.join(ROOT, "configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("file", FILES)
@pytest.mark.parametrize("arg", [*presets.NAMES, *(f"{n},size={s}" for n in ("shapes32", "clevr256")
                                                    for s in presets.SIZES),
                                 *(f"{n},recipe={r}" for n in ("shapes32", "ffhq256") for r in presets.RECIPES), None])
def test_every_preset_validates(file, arg):
    c = load(file).get_config(arg)
    assert validate(c) is c
    assert c.name.startswith(file)


def test_reference_presets_follow_the_spec():
    g = load("gansformer")
    expected = {  # preset: (num_local, latent dim, r1 gamma, mirror, aspect ratio)
        "clevr256": (8, 16, 40.0, False, 0.75),
        "ffhq256": (16, 32, 10.0, True, 1.0),
        "bedroom256": (16, 32, 100.0, False, 188 / 256),
        "cityscapes256": (16, 32, 20.0, True, 0.5),
        "ffhq1024": (16, 32, 10.0, True, 1.0),
    }
    for name, (k, dim, gamma, mirror, aspect) in expected.items():
        c = g.get_config(name)
        assert (c.model.num_local, c.model.z_dim, c.model.w_dim) == (k, dim, dim), name
        assert (c.train.r1_gamma, c.data.mirror, c.data.aspect_ratio) == (gamma, mirror, aspect), name
        assert (c.train.batch_size, c.train.lr_g, c.train.lr_d, c.train.ema_kimg) == (32, 0.002, 0.002, 10.0)
        assert (c.train.style_mixing_prob, c.train.loss, c.train.r1_interval) == (0.9, "logistic", 16)
        assert (c.model.attention, c.model.heads, c.model.kmeans_iters) == ("official", 1, 1)
        assert (c.model.channel_base, c.model.channel_max) == (32768, 512)
        assert c.model.resolution == (1024 if name == "ffhq1024" else 256)
        clevr = name == "clevr256"
        assert c.model.global_modulation is not clevr and c.model.mapping_attention is not clevr


def test_stylegan2_presets_are_the_baseline():
    s, g = load("stylegan2"), load("gansformer")
    for name in presets.NAMES:
        c, ref = s.get_config(name), g.get_config(name)
        assert (c.model.num_local, c.model.z_dim, c.model.w_dim, c.model.attention) == (0, 512, 512, "none")
        assert (c.model.architecture_g, c.model.architecture_d) == ("skip", "resnet")
        assert (c.model.mapping_layers, c.model.mapping_resnet) == (4, False)  # 9 plain fc
        # Same data and training as the GANsformer preset of the same name: a fair comparison.
        assert c.data.to_dict() == ref.data.to_dict() and c.train.to_dict() == ref.train.to_dict()
        assert c.model.resolution == ref.model.resolution


def test_size_ladder_scales_widths_and_latents():
    g = load("gansformer")
    base = g.get_config("clevr256")
    got = {s: g.get_config(f"clevr256,size={s}").model for s in presets.SIZES}
    assert got["m"].to_dict() == base.model.to_dict()
    assert [(m.channel_base, m.channel_max, m.num_local) for m in got.values()] == [
        (16384, 256, 4), (32768, 512, 8), (65536, 1024, 12), (131072, 2048, 16)]
    small = load("stylegan2").get_config("shapes32,size=s").model
    assert (small.channel_base, small.channel_max, small.num_local) == (512, 16, 0)


@pytest.mark.parametrize("arg, message", [
    ("mnist", "config preset 'mnist' is not one of ('shapes32'"),
    ("shapes32,size=xxl", f"config preset option size: 'xxl' is not one of {presets.OPTIONS['size']}"),
    ("shapes32,width=2", f"expected key=value with key in {tuple(presets.OPTIONS)}"),
    ("shapes32,length=forever", f"config preset option length: 'forever' is not one of {presets.LENGTHS}"),
    ("ffhq256,length=long", "config preset option length: 'ffhq256' has no measured long length"),
])
def test_bad_preset_names_the_allowed_values(arg, message):
    with pytest.raises(ValueError) as e:
        load("gansformer").get_config(arg)
    assert message in str(e.value)


@pytest.mark.parametrize("family", ["gansformer", "stylegan2"])
def test_long_length_changes_only_the_run_length(family):
    default, long = (load(family).get_config(a) for a in ("shapes32", "shapes32,length=long"))
    assert long.train.total_kimg == presets.CPU["shapes32"]["long_kimg"] > default.train.total_kimg
    long.train.total_kimg = default.train.total_kimg
    assert long.to_dict() == default.to_dict()


def _bad(**fields):
    c = load("gansformer").get_config("shapes32")
    for path, value in fields.items():
        section, key = path.split("__")
        c[section][key] = value
    return c


@pytest.mark.parametrize("fields, message", [
    (dict(train__loss="foo"), "config.train.loss: 'foo' is not one of ('logistic', 'hinge', 'relativistic')"),
    (dict(eval__fid_protocol="clean-fid"),
     "config.eval.fid_protocol: 'clean-fid' is not one of ('pytorch-fid', 'stylegan')"),
    (dict(train__lr_g=0.0), "config.train.lr_g: 0.0 is not in (0, inf)"),
    (dict(train__beta2=1.0), "config.train.beta2: 1.0 is not in [0, 1)"),
    (dict(train__style_mixing_prob=1.5), "config.train.style_mixing_prob: 1.5 is not in [0, 1]"),
    (dict(parallel__strategy="zero3"),
     "config.parallel.strategy: 'zero3' is not one of ('dp', 'fsdp', 'fsdp_tp', 'shard_map')"),
    (dict(parallel__mesh_fsdp=0), "config.parallel.mesh_fsdp: 0 must be -1 (all remaining devices)"),
    (dict(parallel__distributed="yes"), "config.parallel.distributed: 'yes' is not one of ('auto', 'on', 'off')"),
    (dict(parallel__coordinator_address="localhost"), "config.parallel.coordinator_address: 'localhost' is not"),
    (dict(eval__metrics="fid,is"), "config.eval.metrics: 'fid,is' must be a comma list of ('fid', 'kid', 'pr')"),
    (dict(model__resolution=48), "config.model.resolution: 48 is not a power of two"),
    (dict(train__batch_size=6), "config.train.batch_size: the micro-batch 6 (batch_size/grad_accum) is not "
                                "divisible by the minibatch-std group config.model.mbstd_group=4"),
    (dict(train__batch_size=16, train__grad_accum=3), "config.train.batch_size: 16 is not divisible by "
                                                      "config.train.grad_accum=3"),
    (dict(parallel__mesh_data=3), "config.train.batch_size: the micro-batch 16 is not divisible by the 3 batch"),
    (dict(parallel__mesh_data=-1, parallel__mesh_fsdp=-1), "at most one of mesh_data/mesh_fsdp/mesh_model"),
    (dict(parallel__num_processes=2, parallel__process_id=2), "config.parallel.process_id: 2 is not in [0, 2)"),
    (dict(data__dataset="folder"), "config.data.folder: must name an image folder"),
    (dict(data__split="validation"), "config.data.split: 'validation' is not one of ('train', 'test')"),
    (dict(train__noise_mode="off"), "config.train.noise_mode: 'off' is not one of ('random', 'const', 'none')"),
    (dict(parallel__strategy="shard_map", parallel__mesh_model=2),
     "config.parallel.mesh_model: 2 with strategy 'shard_map', which is data parallel only"),
    (dict(model__heads=3), "config.model.heads: 3 does not divide the 32 channels"),  # ModelConfig.validate()
])
def test_validate_names_the_field(fields, message):
    with pytest.raises(ConfigError) as e:
        validate(_bad(**fields))
    assert message in str(e.value)


def test_validate_reports_every_wrong_field_at_once():
    with pytest.raises(ConfigError) as e:
        validate(_bad(train__loss="foo", train__lr_d=-1.0, checkpoint__keep=0))
    assert str(e.value).count("\n") == 2
    assert "config.checkpoint.keep: 0 is not in [1, inf)" in str(e.value)


def test_validate_catches_unknown_and_mistyped_fields():
    c = base_config()
    c.train.lr = 0.01  # a typo for lr_g in a config file silently adds a field; validate refuses it
    model = c.model.to_dict()
    model["remat"] = 1  # ConfigDict keeps field types on assignment, but not when a section is rebuilt
    c.model = ml_collections.ConfigDict(model)
    with pytest.raises(ConfigError) as e:
        validate(c)
    assert "config.train.lr: unknown field (did you mean 'lr_g'?)" in str(e.value)
    assert "config.model.remat: 1 is a int, expected bool" in str(e.value)


def test_validate_checks_the_mesh_against_the_device_count():
    c = load("gansformer").get_config("shapes32")  # batch 16
    validate(c, num_devices=8)  # mesh_data=-1 -> 8 shards, 2 rows each
    c.parallel.mesh_data, c.parallel.mesh_fsdp = 3, 1
    with pytest.raises(ConfigError, match=r"mesh \[3, 1, 1\] does not fit 8 devices"):
        validate(c, num_devices=8)
    c.parallel.mesh_data, c.parallel.mesh_model = -1, 2
    validate(c, num_devices=8)  # 4 data shards x 2 model
    c.train.batch_size = 12
    with pytest.raises(ConfigError, match=r"micro-batch 12 is not divisible by the 8 batch shards"):
        validate(c, num_devices=16)


def _parse(argv):
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "config", flag_values=fv, sys_argv=argv)
    fv(argv)
    return fv.config


def test_command_line_overrides_reach_the_config():
    path = os.path.join(ROOT, "configs", "gansformer.py")
    c = _parse(["prog", f"--config={path}:clevr256,size=s", "--config.train.lr_g=0.001",
                "--config.model.heads=2", "--config.data.mirror=true", "--config.parallel.strategy=fsdp"])
    assert (c.train.lr_g, c.model.heads, c.data.mirror, c.parallel.strategy) == (0.001, 2, True, "fsdp")
    assert c.model.channel_max == 256 and c.train.r1_gamma == 40.0
    validate(c)


def test_bad_overrides_are_refused():
    path = os.path.join(ROOT, "configs", "gansformer.py")
    with pytest.raises(flags.IllegalFlagValueError):
        _parse(["prog", f"--config={path}:shapes32", "--config.train.batch_size=big"])
    with pytest.raises(Exception, match="nosuch"):
        _parse(["prog", f"--config={path}:shapes32", "--config.train.nosuch=1"])
    c = _parse(["prog", f"--config={path}:shapes32", "--config.train.loss=foo"])
    with pytest.raises(ConfigError, match=r"config.train.loss: 'foo' is not one of \('logistic', 'hinge', 'relativistic'\)"):
        validate(c)
