# Eight virtual CPU devices, set before JAX initialises its backends, so sharding tests run anywhere.
import atexit
import os
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The persistent compilation cache (config.compilation_cache) of every run the tests start, in-process or as a
# subprocess, goes to a directory of this session, not the user's ~/.cache.
if "GANJAX_COMPILATION_CACHE" not in os.environ:
    os.environ["GANJAX_COMPILATION_CACHE"] = tempfile.mkdtemp(prefix="ganjax-test-cache-")
    atexit.register(shutil.rmtree, os.environ["GANJAX_COMPILATION_CACHE"], ignore_errors=True)
import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
