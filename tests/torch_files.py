"""Writes `torch.save`-compatible files from NumPy, without PyTorch (test helper).

`write_torch_file(path, obj)` stores `obj` (nested dict / OrderedDict / list / tuple of
np.ndarrays, numbers, strings, booleans and None) as `torch.save` does by default: a zip
archive `PREFIX/{data.pkl, byteorder, data/KEY, version}` whose protocol-2 pickle rebuilds
every array with `torch._utils._rebuild_tensor_v2` from a persistent-id storage. The
pickle is emitted opcode by opcode, since Python's pickler would have to import torch to
name its functions. `bench/torch_parity.py` checks that `torch.load(weights_only=True)`
reads these files. Arrays that are the same object share one storage, as a tensor
registered twice does in torch (PIP-Net's `_multiplier`).

`reference_state_dict(net, num_classes, …)` makes a PIP-Net reference state_dict with the
keys, shapes and dtypes of the reference's real state_dicts (`KEYS_FILE`) and random
values of sensible scales.
"""
from __future__ import annotations

import collections
import io
import json
import pathlib
import re
import struct
import zipfile

import numpy as np

# Every [key, shape, dtype] of the reference's convnext_tiny_26 and resnet50 state_dicts
# (200 classes), read from state_dicts the reference code built (commit 12c4da7, torch
# 2.14.1, torchvision 0.29.1); a copy of ../shared/reference/checkpoint_keys.json.
KEYS_FILE = pathlib.Path(__file__).parent / "data" / "reference_checkpoint_keys.json"
_STORAGE = {np.dtype("float32"): "FloatStorage", np.dtype("float64"): "DoubleStorage",
            np.dtype("float16"): "HalfStorage", np.dtype("int64"): "LongStorage",
            np.dtype("int32"): "IntStorage", np.dtype("uint8"): "ByteStorage",
            np.dtype("bool"): "BoolStorage"}


class _Emitter:
    """Protocol-2 pickle opcodes for the object kinds torch.save writes in a checkpoint."""

    def __init__(self):
        self.out = io.BytesIO()
        self.storages: dict[int, tuple[str, np.ndarray]] = {}

    def op(self, data: bytes) -> None:
        self.out.write(data)

    def global_(self, module: str, name: str) -> None:
        self.op(b"c" + f"{module}\n{name}\n".encode())

    def emit(self, obj) -> None:
        if obj is None:
            self.op(b"N")
        elif obj is True or obj is False:
            self.op(b"\x88" if obj else b"\x89")
        elif isinstance(obj, int):
            if 0 <= obj < 2 ** 31:
                self.op(b"J" + struct.pack("<i", obj))
            else:
                raw = obj.to_bytes((obj.bit_length() + 8) // 8, "little", signed=True)
                self.op(b"\x8a" + bytes([len(raw)]) + raw)
        elif isinstance(obj, float):
            self.op(b"G" + struct.pack(">d", obj))
        elif isinstance(obj, str):
            raw = obj.encode("utf-8")
            self.op(b"X" + struct.pack("<I", len(raw)) + raw)
        elif isinstance(obj, np.ndarray):
            self.tensor(obj)
        elif isinstance(obj, collections.OrderedDict):
            self.global_("collections", "OrderedDict")
            self.op(b")R")  # OrderedDict()
            self.items(obj)
        elif isinstance(obj, dict):
            self.op(b"}")
            self.items(obj)
        elif isinstance(obj, list):
            self.op(b"](")
            for value in obj:
                self.emit(value)
            self.op(b"e")  # APPENDS
        elif isinstance(obj, tuple):
            self.op(b"(")
            for value in obj:
                self.emit(value)
            self.op(b"t")
        else:
            raise TypeError(f"cannot write {type(obj).__name__} into a torch file")

    def items(self, mapping) -> None:
        if mapping:
            self.op(b"(")
            for key, value in mapping.items():
                self.emit(key)
                self.emit(value)
            self.op(b"u")  # SETITEMS

    def tensor(self, array: np.ndarray) -> None:
        if id(array) not in self.storages:
            self.storages[id(array)] = (str(len(self.storages)), array)
        key, _ = self.storages[id(array)]
        contiguous = np.ascontiguousarray(array)
        self.global_("torch._utils", "_rebuild_tensor_v2")
        self.op(b"((")
        self.emit("storage")
        self.global_("torch", _STORAGE[array.dtype])
        self.emit(key)
        self.emit("cpu")
        self.emit(int(array.size))
        self.op(b"tQ")  # TUPLE, BINPERSID
        self.emit(0)
        self.emit(tuple(int(n) for n in array.shape))
        self.emit(tuple(int(s) // array.itemsize for s in contiguous.strides)
                  if array.ndim else ())
        self.emit(False)
        self.emit(collections.OrderedDict())
        self.op(b"tR")  # TUPLE, REDUCE


def write_torch_file(path, obj, prefix: str = "archive", byteorder: str | None = "little"
                     ) -> pathlib.Path:
    """Writes `obj` as `torch.save(obj, path)` would (see the module docstring)."""
    emitter = _Emitter()
    emitter.op(b"\x80\x02")
    emitter.emit(obj)
    emitter.op(b".")
    path = pathlib.Path(path)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr(f"{prefix}/data.pkl", emitter.out.getvalue())
        if byteorder is not None:
            archive.writestr(f"{prefix}/byteorder", byteorder)
        for key, array in emitter.storages.values():
            data = np.ascontiguousarray(array)
            if byteorder == "big":
                data = data.astype(data.dtype.newbyteorder(">"))
            archive.writestr(f"{prefix}/data/{key}", data.tobytes())
        archive.writestr(f"{prefix}/version", "3\n")
    return path


# === PIP-Net reference state_dicts ===
def reference_keys(net: str) -> list[tuple[str, tuple[int, ...], str]]:
    """(key, shape, dtype) of the reference's `model_state_dict` for "convnext_tiny_26" or
    "resnet50" (200 classes, no add-on, no bias), in file order."""
    entries = json.loads(KEYS_FILE.read_text())[net]
    return [(key, tuple(shape), dtype) for key, shape, dtype in entries]


def _random_value(key: str, shape: tuple, dtype: str, rng: np.random.Generator) -> np.ndarray:
    """A random value of a plausible scale for parameter `key` (keeps activations O(1))."""
    if dtype == "int64":
        return np.array(rng.integers(0, 1000), np.int64).reshape(shape)
    name = key.rsplit(".", 1)[-1]
    if name == "running_var":
        value = rng.uniform(0.5, 1.5, shape)
    elif name == "running_mean":
        value = rng.normal(0, 0.1, shape)
    elif name == "layer_scale":
        value = rng.uniform(0.2, 1.0, shape)
    elif name == "weight" and len(shape) == 1:  # LayerNorm / BatchNorm scale
        value = rng.uniform(0.5, 1.5, shape)
    elif name == "weight":  # conv (O, I/groups, kh, kw) or linear (O, I)
        fan_in = int(np.prod(shape[1:]))
        value = rng.normal(0, 1.0 / np.sqrt(fan_in), shape)
    else:  # biases
        value = rng.normal(0, 0.1, shape)
    return value.astype(dtype)


def reference_state_dict(net: str, num_classes: int = 200, num_features: int = 0,
                         bias: bool = False, seed: int = 0, prefix: str = "module.",
                         feature_scale: float = 4.0) -> collections.OrderedDict:
    """A PIP-Net reference state_dict for `net` ("convnext_tiny_26" or "resnet50") with
    random values, as `nn.DataParallel(PIPNet).state_dict()` orders it.

    `feature_scale` multiplies the last block's layer scale (ConvNeXt) or last BN scale
    (ResNet) so that the softmax over prototypes has clear peaks: some presence scores
    above the 0.1 threshold and some below. The scoring sheet W (C, D) mixes zeros (about
    half the entries, as a trained sparse sheet) and positive values.
    """
    rng = np.random.default_rng(seed)
    out = collections.OrderedDict()
    multiplier = np.array([2.0], np.float32)
    backbone_channels = 768 if net.startswith("convnext") else 2048
    for key, shape, dtype in reference_keys(net):
        if not key.startswith("module._net."):
            continue
        value = _random_value(key, shape, dtype, rng)
        if re.search(r"features\.7\.2\.layer_scale|layer4\.2\.bn3\.weight", key):
            value = value * np.float32(feature_scale)
        out[prefix + key.removeprefix("module.")] = value
    prototypes = num_features or backbone_channels
    head = collections.OrderedDict()
    if num_features:
        head["_add_on.0.weight"] = rng.normal(0, 3.0 / np.sqrt(backbone_channels), (
            num_features, backbone_channels, 1, 1)).astype(np.float32)
        head["_add_on.0.bias"] = rng.normal(0, 0.1, num_features).astype(np.float32)
    weight = rng.uniform(0, 2, (num_classes, prototypes)) * (rng.random((num_classes, prototypes)) < 0.5)
    head["_classification.weight"] = weight.astype(np.float32)
    head["_classification.normalization_multiplier"] = multiplier
    if bias:
        head["_classification.bias"] = rng.uniform(0, 0.5, num_classes).astype(np.float32)
    result = collections.OrderedDict([(prefix + "_multiplier", multiplier)])
    result.update(out)
    result.update((prefix + k, v) for k, v in head.items())
    return result


def reference_checkpoint(state_dict: dict, optimizer: bool = True) -> dict:
    """The dict `main.py` saves: the state_dict plus optimiser state_dicts (torch's
    layout: per-parameter state with tensors, param_groups of plain values)."""
    if not optimizer:
        return {"model_state_dict": state_dict}
    first = next(v for v in state_dict.values() if v.dtype == np.float32 and v.ndim > 1)
    state = {0: {"step": np.array(3.0, np.float32), "exp_avg": np.zeros_like(first),
                 "exp_avg_sq": np.ones_like(first)}}
    groups = [{"lr": 5e-4, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0,
               "amsgrad": False, "foreach": None, "maximize": False, "capturable": False,
               "differentiable": False, "fused": None, "initial_lr": 5e-4, "params": [0]}]
    return {"model_state_dict": state_dict,
            "optimizer_net_state_dict": {"state": state, "param_groups": groups},
            "optimizer_classifier_state_dict": {"state": {}, "param_groups": groups}}
