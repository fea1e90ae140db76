"""Reads PyTorch `torch.save` files without PyTorch and without running code from them.

A `torch.save` file (the default zip format since torch 1.6) is a zip archive with one
top-level folder `PREFIX/`: `PREFIX/data.pkl` (a pickle of the saved object),
`PREFIX/data/KEY` (the raw bytes of each storage), `PREFIX/version` and usually
`PREFIX/byteorder`. The pickle names storages by persistent id
`('storage', torch.<Type>Storage, KEY, location, numel)` and rebuilds each tensor with
`torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)`.

`read_torch_file` unpickles with a `pickle.Unpickler` whose `find_class` knows only those
few names, mapped to NumPy: tensors become `np.ndarray`s, storages read-only byte views,
`collections.OrderedDict` itself; plain dicts, lists, tuples, numbers, strings, booleans
and None need no class. Any other global (`os.system`, `builtins.eval`, a torch module
class, …) is refused with `TorchCheckpointError` naming the file and the object, before
it could be called. Pickles of the legacy (pre-1.6) format and TorchScript archives are
refused too.

`read_state_dict` returns the model weights of such a file as `{name: np.ndarray}`:
`{'model_state_dict': …}` as the PIP-Net reference writes it (optimiser entries are
ignored and never read from disk), or a bare state_dict.
"""
from __future__ import annotations

import collections
import os
import pickle
import re
import zipfile
from typing import Any

import numpy as np

# Storage class name → NumPy dtype of one element (little-endian; `byteorder` may flip it).
# torch.save names a tensor's storage by its typed class; `UntypedStorage` (raw bytes)
# would make a float tensor look like uint8, so it is refused like any unknown name.
STORAGE_DTYPES = {
    "FloatStorage": "<f4", "DoubleStorage": "<f8", "HalfStorage": "<f2",
    "BFloat16Storage": "<u2",  # bit patterns, widened to float32 by `_Tensor.array`
    "LongStorage": "<i8", "IntStorage": "<i4", "ShortStorage": "<i2", "CharStorage": "i1",
    "ByteStorage": "u1", "BoolStorage": "?",
}
MODEL_KEYS = ("model_state_dict", "state_dict")  # where checkpoints keep the weights
DATA_PARALLEL_PREFIX = "module."


class TorchCheckpointError(ValueError):
    """The file is not a readable `torch.save` file, or it holds something not allowed."""


class _StorageType:
    """Stands for `torch.<name>`, a storage class; only ever used as a persistent-id tag."""

    def __init__(self, name: str):
        self.name = name
        self.dtype = np.dtype(STORAGE_DTYPES[name])

    def __repr__(self):
        return f"torch.{self.name}"


class _TensorClass:
    """Stands for `torch.Tensor` / `torch.nn.Parameter` in `_rebuild_from_type_v2`."""

    def __init__(self, name: str):
        self.name = name


class _Storage:
    """A storage: `numel` elements of `dtype` in archive entry `name`, read on first use
    (so that the optimiser states of a checkpoint are never read)."""

    __slots__ = ("archive", "name", "dtype", "numel", "bfloat16", "_values")

    def __init__(self, archive: zipfile.ZipFile, name: str, dtype: np.dtype, numel: int,
                 bfloat16: bool):
        self.archive, self.name, self.dtype, self.numel = archive, name, dtype, numel
        self.bfloat16, self._values = bfloat16, None

    @property
    def values(self) -> np.ndarray:
        """The elements as a read-only 1-D little-endian array."""
        if self._values is None:
            data = self.archive.read(self.name)
            if len(data) != self.numel * self.dtype.itemsize:  # never view past the data
                raise TorchCheckpointError(f"storage {self.name!r} holds {len(data)} bytes, "
                                           f"not {self.numel} elements (damaged file?).")
            values = np.frombuffer(data, dtype=self.dtype)
            if self.dtype.byteorder == ">":
                values = values.astype(self.dtype.newbyteorder("<"))
            values.flags.writeable = False
            self._values = values
        return self._values

    def __setstate__(self, state):  # a BUILD opcode on a storage: never in torch files
        raise pickle.UnpicklingError("a pickle BUILD on a storage")


class _Tensor:
    """A strided view of a storage, checked to lie inside it; read by `array()`."""

    __slots__ = ("storage", "offset", "size", "stride")

    def __init__(self, storage: _Storage, offset: int, size: tuple, stride: tuple):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def array(self) -> np.ndarray:
        flat = self.storage.values
        if 0 in self.size:
            array = np.zeros(self.size, flat.dtype)
        else:
            array = np.lib.stride_tricks.as_strided(
                flat[self.offset:], self.size, tuple(s * flat.itemsize for s in self.stride),
                writeable=False)
        if self.storage.bfloat16:
            array = (array.astype(np.uint32) << 16).view(np.float32)
        return array

    def __setstate__(self, state):  # a BUILD opcode on a tensor: never in torch files
        raise pickle.UnpicklingError("a pickle BUILD on a tensor")


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None) -> _Tensor:
    """`torch._utils._rebuild_tensor_v2` on a `_Storage`: a strided view, checked to lie
    inside the storage."""
    del requires_grad, backward_hooks, metadata
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError(f"a tensor built from {type(storage).__name__}, not a "
                                     "storage")
    size, stride = tuple(size), tuple(stride)
    ints = (storage_offset, *size, *stride)
    if len(size) != len(stride) or not all(isinstance(v, int) and v >= 0 for v in ints):
        raise pickle.UnpicklingError(f"a tensor with offset {storage_offset!r}, size "
                                     f"{size!r} and stride {stride!r}")
    if 0 not in size:
        last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= storage.numel:
            raise pickle.UnpicklingError(
                f"a tensor of size {size} (offset {storage_offset}, stride {stride}) reaching "
                f"element {last} of storage {storage.name!r}, which has {storage.numel}")
    return _Tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None) -> _Tensor:
    """`torch._utils._rebuild_parameter(_with_state)`: a Parameter is its tensor here."""
    del requires_grad, backward_hooks
    if not isinstance(data, _Tensor) or state:
        raise pickle.UnpicklingError("a Parameter that is not a plain tensor")
    return data


def _rebuild_from_type_v2(func, new_type, args, state) -> _Tensor:
    """`torch._tensor._rebuild_from_type_v2` for plain `Tensor`/`Parameter` only."""
    if func not in _REBUILDERS or not isinstance(new_type, _TensorClass) or state:
        raise pickle.UnpicklingError("a tensor subclass or a tensor with Python state")
    return func(*args)


_REBUILDERS = (_rebuild_tensor_v2, _rebuild_parameter)
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch", "Tensor"): _TensorClass("Tensor"),
    ("torch.nn.parameter", "Parameter"): _TensorClass("Parameter"),
    **{("torch", name): _StorageType(name) for name in STORAGE_DTYPES},
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only `ALLOWED_GLOBALS` and storage persistent ids of one archive."""

    def __init__(self, file, path: str, archive: zipfile.ZipFile, prefix: str,
                 byteorder: str):
        super().__init__(file)
        self.path, self.archive, self.prefix, self.byteorder = path, archive, prefix, byteorder
        self.storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str):
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except (KeyError, TypeError):
            raise TorchCheckpointError(
                f"{self.path!r} refers to {module}.{name}, which a PyTorch checkpoint of "
                "weights does not need; refusing to load it (only tensors, storages, "
                "OrderedDict/dict/list/tuple, numbers and strings are read).") from None

    def persistent_load(self, pid):
        if (not isinstance(pid, tuple) or len(pid) != 5 or pid[0] != "storage"
                or not isinstance(pid[1], _StorageType) or not isinstance(pid[2], str)
                or not isinstance(pid[4], int)):
            raise TorchCheckpointError(f"{self.path!r}: unknown persistent id {pid!r} in the "
                                       "pickle; refusing to load it.")
        _, storage_type, key, _, numel = pid
        if key not in self.storages:
            self.storages[key] = self._read_storage(storage_type, key, numel)
        return self.storages[key]

    def _read_storage(self, storage_type: _StorageType, key: str, numel: int) -> _Storage:
        name = f"{self.prefix}data/{key}"
        if "/" in key or name not in self.archive.NameToInfo:
            raise TorchCheckpointError(f"{self.path!r}: storage {key!r} has no entry {name!r} "
                                       "in the archive (truncated or damaged file?).")
        dtype = storage_type.dtype.newbyteorder(">" if self.byteorder == "big" else "<")
        expected = numel * dtype.itemsize
        size = self.archive.getinfo(name).file_size
        if numel < 0 or size != expected:
            raise TorchCheckpointError(
                f"{self.path!r}: storage {key!r} holds {size} bytes; {numel} elements of "
                f"{storage_type!r} need {expected} (damaged file?).")
        return _Storage(self.archive, name, dtype, numel, storage_type.name == "BFloat16Storage")


def _archive_prefix(path: str, archive: zipfile.ZipFile) -> str:
    pickles = [n for n in archive.namelist() if re.fullmatch(r"[^/]+/data\.pkl", n)]
    if len(pickles) != 1:
        names = archive.namelist()
        what = ("a TorchScript archive (torch.jit.save), not a state_dict"
                if any(n.endswith("/constants.pkl") for n in names)
                else "not a torch.save archive")
        raise TorchCheckpointError(f"{path!r} is a zip file but {what}: it has no single "
                                   f"PREFIX/data.pkl (entries: {names[:5]}…).")
    return pickles[0][: -len("data.pkl")]


def _to_numpy(obj):
    """Replaces the `_Tensor`s in a nested structure by their arrays (reading them)."""
    if isinstance(obj, _Tensor):
        return obj.array()
    if isinstance(obj, collections.OrderedDict):
        return collections.OrderedDict((k, _to_numpy(v)) for k, v in obj.items())
    if isinstance(obj, dict):
        return {k: _to_numpy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_numpy(v) for v in obj)
    if isinstance(obj, (_Storage, _StorageType, _TensorClass)):
        raise TorchCheckpointError(f"the file holds a bare {type(obj).__name__.strip('_')}, "
                                   "not a tensor")
    return obj


def _load(path: str, select=lambda obj: obj) -> Any:
    """Unpickles `path` with tensors as lazy views, then reads the tensors of
    `select(obj)` (only those) into `np.ndarray`s."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Checkpoint {path!r} does not exist.")
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            head = f.read(2)
        hint = (" It looks like a pickle: PyTorch's legacy format (torch < 1.6 or "
                "_use_new_zipfile_serialization=False), which is not read here; re-save it "
                "with a current torch: torch.save(torch.load(f, weights_only=True), new_f)."
                if head[:1] == b"\x80" else " (truncated download?)")
        raise TorchCheckpointError(f"{path!r} is not a torch.save zip archive.{hint}")
    try:
        with zipfile.ZipFile(path) as archive:
            prefix = _archive_prefix(path, archive)
            byteorder = "little"
            if f"{prefix}byteorder" in archive.NameToInfo:
                byteorder = archive.read(f"{prefix}byteorder").decode("ascii", "replace")
                if byteorder not in ("little", "big"):
                    raise TorchCheckpointError(f"{path!r}: unknown byteorder {byteorder!r}.")
            with archive.open(f"{prefix}data.pkl") as pkl:
                obj = _RestrictedUnpickler(pkl, path, archive, prefix, byteorder).load()
            return _to_numpy(select(obj))
    except TorchCheckpointError:
        raise
    except (zipfile.BadZipFile, EOFError, pickle.UnpicklingError, ValueError, TypeError,
            KeyError, IndexError, AttributeError, OverflowError, MemoryError,
            RecursionError, UnicodeDecodeError, NotImplementedError, OSError) as e:
        raise TorchCheckpointError(
            f"{path!r} cannot be read as a torch.save archive (truncated or damaged?): "
            f"{type(e).__name__}: {e}") from e


def read_torch_file(path: str | os.PathLike) -> Any:
    """The object a `torch.save` file holds, tensors as read-only `np.ndarray`s.

    Raises:
        FileNotFoundError: no such file.
        TorchCheckpointError: not a `torch.save` zip archive, truncated or damaged, a
            legacy-format or TorchScript file, or a pickle that refers to anything but
            tensors, storages and plain containers (nothing from it is run).
    """
    return _load(os.fspath(path))


def _model_weights(obj: Any, path: str) -> dict:
    """`obj['model_state_dict']` / `obj['state_dict']` / `obj`, checked to map names to
    tensors (still lazy)."""
    if isinstance(obj, dict):
        for key in MODEL_KEYS:
            if key in obj:
                obj = obj[key]
                break
    tensors = (_Tensor, np.ndarray)
    if not isinstance(obj, dict) or not any(isinstance(v, tensors) for v in obj.values()):
        keys = sorted(map(str, obj))[:10] if isinstance(obj, dict) else type(obj).__name__
        raise TorchCheckpointError(
            f"{path!r} holds no model weights: expected a dict with 'model_state_dict' (as "
            f"the PIP-Net code saves) or a state_dict of tensors; found {keys!r}.")
    bad = [str(k) for k, v in obj.items() if not isinstance(k, str)
           or not isinstance(v, tensors)]
    if bad:
        raise TorchCheckpointError(f"{path!r}: the state_dict has entries that are not named "
                                   f"tensors: {bad[:10]!r}.")
    return {k.removeprefix(DATA_PARALLEL_PREFIX): v for k, v in obj.items()}


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The model weights of a `torch.save` file by name, in file order: its
    `model_state_dict` (the PIP-Net reference's checkpoints; the optimiser entries are
    not even read), its `state_dict`, or the file's dict of tensors itself. A `module.`
    prefix (nn.DataParallel) is removed from every key that has it.

    Raises:
        FileNotFoundError, TorchCheckpointError: as `read_torch_file`, or no such mapping.
    """
    path = os.fspath(path)
    return _load(path, lambda obj: _model_weights(obj, path))


def is_torch_file(path: str | os.PathLike) -> bool:
    """Whether `path` is a zip archive with a `PREFIX/data.pkl` (a `torch.save` file)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(re.fullmatch(r"[^/]+/data\.pkl", n) for n in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False
