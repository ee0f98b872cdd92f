"""Safe, framework-free reading of GANsformer checkpoints: TF pickles and PyTorch pickles/state dicts.

A pickle can name any importable callable, so `pickle.load` on a downloaded file runs whatever it
names. This unpickler resolves only an allow-list: the container and numpy classes the formats use,
plus stand-ins for the classes of the two codebases (dnnlib's TF `Network`, the reference PyTorch
version's persistent modules, torch tensors and storages). Neither TensorFlow nor torch is imported;
torch tensors are rebuilt as numpy arrays from the raw storage bytes of torch's zip format.
"""

import collections
import io
import pickle
import zipfile

import numpy as np
from numpy._core import multiarray as _np_multiarray
from numpy._core import numeric as _np_numeric


class ConvertError(ValueError):
    """A source checkpoint that cannot be converted; the message names the file or variable."""


class TFNetwork:
    """Stand-in for dnnlib.tflib.network.Network: keeps the pickled state, builds nothing."""

    def __setstate__(self, state):
        if not isinstance(state, dict) or "variables" not in state:
            raise ConvertError("dnnlib.tflib.network.Network without 'variables' in its pickled state")
        self.name = state.get("name", "")
        self.version = state.get("version", 0)
        self.static_kwargs = dict(state.get("static_kwargs", {}))
        self.components = dict(state.get("components", {}))
        self.variables = [(str(n), np.asarray(v)) for n, v in state["variables"]]

    def tensors(self, prefix=""):
        """All variables of this network and its components, as {'comp/scope/var': array}."""
        out = {prefix + name: value for name, value in self.variables}
        for name, comp in self.components.items():
            if not isinstance(comp, TFNetwork):
                raise ConvertError(f"TF network component {prefix}{name} is not a dnnlib Network")
            out.update(comp.tensors(prefix + name + "/"))
        return out


class TorchModule:
    """Stand-in for a pickled torch.nn.Module (persistent class of the reference, or a torch.nn one)."""

    class_name = ""

    def __setstate__(self, state):
        self.__dict__.update(state if isinstance(state, dict) else {})

    def attr(self, name, default=None):
        return self.__dict__.get(name, default)

    def submodules(self):
        return dict(self.__dict__.get("_modules") or {})

    def tensors(self, prefix=""):
        """Parameters and persistent buffers in torch's state_dict naming ('mapping.mlp.l0.fc0.weight')."""
        out = {}
        skip = set(self.__dict__.get("_non_persistent_buffers_set") or ())
        for group in ("_parameters", "_buffers"):
            for name, value in (self.__dict__.get(group) or {}).items():
                if value is not None and name not in skip:
                    out[prefix + name] = value
        for name, mod in self.submodules().items():
            if isinstance(mod, TorchModule):
                out.update(mod.tensors(prefix + name + "."))
        return out

    def find(self, class_name):
        """Submodules (any depth) whose reference class is `class_name`, as {'path': module}."""
        found = {}

        def walk(mod, path):
            if mod.class_name == class_name:
                found[path] = mod
            for name, sub in mod.submodules().items():
                if isinstance(sub, TorchModule):
                    walk(sub, f"{path}.{name}" if path else name)

        walk(self, "")
        return found


def _persistent_module(meta):
    # torch_utils.persistence._reconstruct_persistent_obj(meta): meta carries the class name, the
    # module's source (never executed here) and the instance state.
    if not isinstance(meta, dict) or meta.get("type") != "class" or not isinstance(meta.get("state"), dict):
        raise ConvertError("torch_utils.persistence object with unexpected metadata")
    obj = TorchModule()
    obj.__setstate__(meta["state"])
    obj.class_name = str(meta.get("class_name", ""))
    return obj


def _torch_module_class(name):
    return type(name, (TorchModule,), {"class_name": name})


class _Storage:
    """A torch storage dtype marker (torch.FloatStorage ...) and, once loaded, its flat data."""

    def __init__(self, dtype, data=None):
        self.dtype, self.data = dtype, data


_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16, "CharStorage": np.int8,
    "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


def _rebuild_tensor(storage, offset, size, stride, *_unused):
    if not isinstance(storage, _Storage) or storage.data is None:
        raise ConvertError("torch tensor without loaded storage")
    flat = storage.data
    if len(size) == 0:
        return np.array(flat[offset])
    item = flat.itemsize
    view = np.lib.stride_tricks.as_strided(flat[offset:], shape=tuple(size),
                                           strides=tuple(s * item for s in stride))
    return np.array(view)


def _rebuild_parameter(data, *_unused):
    return data


_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def _load_from_bytes(data):
    # A storage pickled inside a plain pickle (how pickle.dump writes torch tensors): torch's legacy
    # serialisation of that one storage -- magic, protocol, sys info, a pickle whose persistent id
    # names the storage, the list of keys, then per key an int64 element count and the raw bytes.
    if data[:2] == b"PK":
        return _load_torch_zip(io.BytesIO(data), "<embedded storage>")
    f = io.BytesIO(data)
    try:
        magic, _protocol, info = (pickle.load(f) for _ in range(3))
        if magic != _TORCH_LEGACY_MAGIC or not info.get("little_endian", True):
            raise ConvertError("embedded torch storage: unknown serialisation")
        found = {}

        def record(key, dtype):
            found[key] = dtype
            return None

        unpickler = _Unpickler(f, "<embedded storage>", record)
        unpickler.persistent_load = lambda pid: _Storage(unpickler.storage_dtype(pid))
        stub = unpickler.load()
        keys = pickle.load(f)
        if len(keys) != 1 or not isinstance(stub, _Storage):
            raise ConvertError("embedded torch storage: expected exactly one storage")
        count = int(np.frombuffer(f.read(8), dtype="<i8")[0])
        raw = f.read(count * np.dtype(stub.dtype).itemsize)
        if len(raw) != count * np.dtype(stub.dtype).itemsize:
            raise ConvertError("embedded torch storage: data ends early (truncated file?)")
        stub.data = np.frombuffer(raw, dtype=stub.dtype)
        return stub
    except ConvertError:
        raise
    except Exception as e:
        raise ConvertError(f"embedded torch storage unreadable ({type(e).__name__}: {e})") from e


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("dnnlib.util", "EasyDict"): dict,
    ("dnnlib", "EasyDict"): dict,
    ("dnnlib.tflib.network", "Network"): TFNetwork,
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _persistent_module,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_from_bytes,
    ("torch", "Size"): tuple,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}
# numpy arrays and scalars (TF variables; numpy values in module state). numpy >= 2 keeps these in
# numpy._core; pickles written by numpy 1 name numpy.core.
for _mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _ALLOWED[(_mod, "_reconstruct")] = _np_multiarray._reconstruct
    _ALLOWED[(_mod, "scalar")] = _np_multiarray.scalar
for _mod in ("numpy.core.numeric", "numpy._core.numeric"):  # arrays pickled with protocol 5
    _ALLOWED[(_mod, "_frombuffer")] = _np_numeric._frombuffer


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, source, storages=None):
        super().__init__(file, encoding="latin1")
        self._source = source
        self._storages = storages

    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _Storage(_STORAGE_DTYPES[name])
        if (module, name) == ("torch.storage", "UntypedStorage"):
            return _Storage(np.uint8)
        if module.startswith("torch.nn.modules."):
            return _torch_module_class(name)
        raise ConvertError(
            f"{self._source}: the pickle refers to {module}.{name}, which is not part of a GANsformer "
            "TF or PyTorch checkpoint (refusing to load it)")

    def storage_dtype(self, pid):
        # torch's persistent id for a storage: ('storage', <dtype marker>, key, location, numel, ...)
        if not (isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == "storage"):
            raise ConvertError(f"{self._source}: unexpected persistent reference {pid!r}")
        if not isinstance(pid[1], _Storage):
            raise ConvertError(f"{self._source}: storage of unsupported type {pid[1]!r}")
        return pid[1].dtype

    def persistent_load(self, pid):
        dtype = self.storage_dtype(pid)
        if self._storages is None:
            raise ConvertError(f"{self._source}: tensor storage outside a torch archive")
        return _Storage(dtype, self._storages(str(pid[2]), dtype))


def _load_torch_zip(file, source):
    try:
        zf = zipfile.ZipFile(file)
    except zipfile.BadZipFile as e:
        raise ConvertError(f"{source}: not a torch zip archive ({e})") from e
    names = zf.namelist()
    pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
    if len(pkl) != 1:
        raise ConvertError(f"{source}: a zip archive without a data.pkl: not a torch.save checkpoint")
    root = pkl[0][: -len("data.pkl")]
    if root + "byteorder" in names and zf.read(root + "byteorder").decode() != "little":
        raise ConvertError(f"{source}: big-endian torch archives are not supported")

    def storage(key, dtype):
        try:
            raw = zf.read(f"{root}data/{key}")
        except KeyError as e:
            raise ConvertError(f"{source}: missing tensor data {root}data/{key}") from e
        return np.frombuffer(raw, dtype=dtype)

    try:
        return _Unpickler(io.BytesIO(zf.read(pkl[0])), source, storage).load()
    except ConvertError:
        raise
    except Exception as e:  # a damaged archive member: name the file
        raise ConvertError(f"{source}: cannot read the torch archive ({type(e).__name__}: {e})") from e


def load(path):
    """Read a checkpoint file without running code from it. Returns the unpickled object, with
    TFNetwork / TorchModule stand-ins and numpy arrays for tensors."""
    with open(path, "rb") as f:
        head = f.read(4)
        f.seek(0)
        if head.startswith(b"PK"):
            return _load_torch_zip(f, path)
        try:
            return _Unpickler(f, path).load()
        except ConvertError:
            raise
        except EOFError as e:
            raise ConvertError(f"{path}: truncated file (pickle ended early)") from e
        except Exception as e:
            raise ConvertError(f"{path}: not a readable pickle ({type(e).__name__}: {e})") from e
