# Eight virtual CPU devices, set before JAX initialises its backends, so sharding tests run anywhere.
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
