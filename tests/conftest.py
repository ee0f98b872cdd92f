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
# XLA:CPU's backend (LLVM) without optimisation for the tests' programs, in-process and in the subprocesses
# they start: the suite is mostly compiling tiny models, and unoptimised code compiles sooner. Measured on a
# tiny GANsformer R1 step (tests/test_train_step.py's, Zen 5): compile 21.1 -> 15.1 s, the step 14 -> 27 ms.
# Numerics are float32 either way (tests compare to rounding); GANJAX_TEST_XLA_OPT=1 keeps the default.
if os.environ.get("GANJAX_TEST_XLA_OPT") != "1" and "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()
import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
