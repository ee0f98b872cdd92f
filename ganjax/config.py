"""The one config schema. Config files in configs/ start from `base_config()` and override fields.

Sections: model (architecture), data (dataset and loader), train (optimisation and loop),
parallel (mesh and sharding strategy), checkpoint, eval, bench.
"""

import ml_collections


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = "gansformer"
    c.seed = 0

    m = c.model = ml_collections.ConfigDict()
    m.resolution = 32
    m.num_channels = 3
    m.architecture_g = "resnet"  # resnet | skip
    m.architecture_d = "resnet"
    m.channel_base = 32768  # channels at resolution r: min(channel_base // r, channel_max)
    m.channel_max = 512
    m.z_dim = 32
    m.w_dim = 32
    m.num_local = 16  # local latent components; k = num_local + 1 (global is last). 0 = StyleGAN2.
    m.mapping_layers = 4  # residual layers per MLP (each 2 fc) + 1 output fc => 9 fc
    m.mapping_lrmul = 0.01
    m.mapping_norm = "joint"  # joint (PyTorch reference) | component (TF reference)
    m.mapping_attention = True  # self-attention among local latents in the mapping network
    m.global_modulation = True  # the global latent drives StyleGAN modulation; off = plain convs
    m.attention = "official"  # official | simplex | duplex | none
    m.attention_start_res = 4  # attention at resolutions start..end (inclusive)
    m.attention_end_res = 128
    m.heads = 1
    m.kmeans_iters = 1
    m.integration = "mul"  # mul | add | both
    m.attention_dropout = 0.12
    m.conv_last = True  # the PyTorch reference's extra 3x3 conv in the last block
    m.fused_modconv = True  # batch-shared weights with input/output scaling; False = per-sample grouped
    m.mbstd_group = 4
    m.mbstd_channels = 1
    m.d_attention = False  # latent aggregators in D (TF reference's --d-transformer)
    m.compute_dtype = "float32"  # float32 | bfloat16 (params stay float32)
    m.remat = False

    d = c.data = ml_collections.ConfigDict()
    d.dataset = "shapes"  # shapes | folder | any TFDS catalog name (e.g. cifar10, clevr)
    d.data_dir = ""  # TFDS data dir; "" = ~/tensorflow_datasets or $TFDS_DATA_DIR
    d.folder = ""  # image folder for dataset=folder
    d.split = "train"
    d.num_images = 10000  # size of the procedural dataset
    d.aspect_ratio = 1.0  # crop to this aspect (h/w) then pad to square (GANsformer preprocessing)
    d.mirror = False
    d.shuffle_seed = 0
    d.prefetch = 2
    d.worker_count = 0  # grain worker processes; 0 = in-process

    t = c.train = ml_collections.ConfigDict()
    t.batch_size = 32  # global batch
    t.total_kimg = 10000
    t.loss = "logistic"  # logistic (non-saturating) | hinge
    t.lr_g = 0.002
    t.lr_d = 0.002
    t.beta1 = 0.0
    t.beta2 = 0.99
    t.eps = 1e-8
    t.r1_gamma = 10.0
    t.r1_interval = 16  # lazy regularisation interval for D (0 = no R1)
    t.pl_weight = 0.0  # path-length regularisation (0 = off)
    t.pl_interval = 4
    t.pl_decay = 0.01
    t.pl_batch_shrink = 2
    t.style_mixing_prob = 0.9
    t.ema_kimg = 10.0  # EMA half-life of G_ema in kimg
    t.ema_rampup = 0.0  # 0 = off; else half-life is min(ema_kimg, cur_kimg * ema_rampup)
    t.grad_accum = 1  # micro-batches per step
    t.max_consecutive_skips = 10  # non-finite updates in a row before the run stops
    t.log_every = 10  # steps
    t.sample_every_kimg = 5.0
    t.sample_grid = 16  # images in the fixed-latent sample grid
    t.price_per_device_hour = 0.0

    p = c.parallel = ml_collections.ConfigDict()
    p.strategy = "dp"  # dp | fsdp | fsdp_tp | shard_map
    p.mesh_data = -1  # -1 = all remaining devices
    p.mesh_fsdp = 1
    p.mesh_model = 1
    p.distributed = "auto"  # auto | on | off: jax.distributed.initialize()
    p.coordinator_address = ""
    p.num_processes = 0
    p.process_id = -1

    k = c.checkpoint = ml_collections.ConfigDict()
    k.every_kimg = 10.0
    k.keep = 3
    k.async_save = True

    e = c.eval = ml_collections.ConfigDict()
    e.every_kimg = 0.0  # 0 = no periodic evaluation
    e.num_images = 10000
    e.metrics = "fid"  # comma list of fid, kid, pr
    e.inception_path = ""  # .npz from `ganjax convert inception`; "" = default cache location
    e.batch_size = 64
    return c
