"""JAX's persistent compilation cache, on for training and bench (config.compilation_cache), so a resumed
run, a repeated bench or a sweep point with the same shapes loads its programs instead of compiling them.

The cache is keyed by the program, the devices, the compile options and the XLA flags, so a changed config
or another machine type compiles afresh; entries are written by process 0 only (JAX's rule), and read by
every process. Set config.compilation_cache = "" to turn it off, or point it elsewhere (a shared file system
works for several hosts).
"""

import os

import jax

# Programs that compile faster than this are not worth a cache entry (JAX's default is 1 s).
MIN_COMPILE_SECONDS = 0.5


def enable(directory: str) -> str | None:
    """Use `directory` (~ expanded) as the persistent cache; '' turns it off. Returns the path in use."""
    if not directory:
        jax.config.update("jax_enable_compilation_cache", False)
        return None
    path = os.path.abspath(os.path.expanduser(directory))
    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    return path
