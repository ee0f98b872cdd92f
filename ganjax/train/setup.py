"""Everything a run needs for one config on one mesh: models, optimizers, shardings, state, step."""

import dataclasses

import jax

from ganjax import parallel
from ganjax.augment.adaptive import AugmentConfig
from ganjax.models import ModelConfig, build_models
from ganjax.train import state as state_lib
from ganjax.train.step import TrainStep, make_train_step


@dataclasses.dataclass
class Training:
    config: object
    mesh: jax.sharding.Mesh
    model_cfg: ModelConfig
    G: object
    D: object
    g_opt: object
    d_opt: object
    state_shardings: object  # NamedSharding pytree of TrainState
    batch_sharding: jax.sharding.NamedSharding
    train_step: TrainStep

    def init_state(self, seed: int | None = None) -> state_lib.TrainState:
        """A fresh state, created directly in its shardings."""
        seed = self.config.seed if seed is None else seed
        rules = parallel.logical_rules(self.config)
        state, _ = state_lib.create_state(self.G, self.D, self.g_opt, self.d_opt, self.model_cfg, self.mesh,
                                          rules, seed, _augment_state(self.config))
        return state

    def abstract_state(self):
        """ShapeDtypeStructs with the target shardings (the restore target of a checkpoint)."""
        rules = parallel.logical_rules(self.config)
        boxed, shardings = state_lib.abstract_state(self.G, self.D, self.g_opt, self.d_opt, self.model_cfg,
                                                    self.mesh, rules, _augment_state(self.config))
        return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            state_lib.unbox(boxed), shardings)


def _augment_state(config) -> dict:
    return AugmentConfig.from_config(config.augment).init_state()


def build(config, mesh) -> Training:
    model_cfg = ModelConfig.from_config(config.model)
    G, D = build_models(model_cfg)
    g_opt, d_opt = state_lib.make_optimizers(config.train)
    rules = parallel.logical_rules(config)
    _, shardings = state_lib.abstract_state(G, D, g_opt, d_opt, model_cfg, mesh, rules, _augment_state(config))
    train_step = make_train_step(config, mesh, G, D, g_opt, d_opt, shardings)
    return Training(config=config, mesh=mesh, model_cfg=model_cfg, G=G, D=D, g_opt=g_opt, d_opt=d_opt,
                    state_shardings=shardings, batch_sharding=parallel.batch_sharding(mesh),
                    train_step=train_step)
