"""The torch.save reader (`pipnet_tf/torch_checkpoint.py`): values, layouts of the file,
and refusal of malicious, malformed and non-checkpoint files (without running anything)."""
from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile

import numpy as np
import pytest

from pipnet_tf.torch_checkpoint import (
    TorchCheckpointError,
    is_torch_file,
    read_state_dict,
    read_torch_file,
)
from tests.torch_files import reference_checkpoint, write_torch_file


def _state_dict():
    rng = np.random.default_rng(0)
    shared = np.array([2.0], np.float32)
    return collections.OrderedDict([
        ("module._multiplier", shared),
        ("module._net.conv1.weight", rng.normal(size=(4, 3, 3, 3)).astype(np.float32)),
        ("module._net.bn1.num_batches_tracked", np.array(17, np.int64)),
        ("module._net.bn1.mask", np.array([True, False])),
        ("module._net.half", rng.normal(size=(5,)).astype(np.float16)),
        ("module._classification.normalization_multiplier", shared),
    ])


def test_values_dtypes_and_shared_storages_round_trip(tmp_path):
    state_dict = _state_dict()
    path = write_torch_file(tmp_path / "ck", reference_checkpoint(state_dict))
    loaded = read_torch_file(path)
    assert list(loaded) == ["model_state_dict", "optimizer_net_state_dict",
                            "optimizer_classifier_state_dict"]
    assert loaded["optimizer_net_state_dict"]["param_groups"][0]["betas"] == (0.9, 0.999)
    for key, value in state_dict.items():
        got = loaded["model_state_dict"][key]
        assert got.dtype == value.dtype and got.shape == value.shape, key
        np.testing.assert_array_equal(got, value)
    # The twice-registered multiplier is one storage (+ 3 optimiser tensors).
    with zipfile.ZipFile(path) as archive:
        assert len([n for n in archive.namelist() if "/data/" in n]) == len(state_dict) - 1 + 3


@pytest.mark.parametrize("wrap", ["checkpoint", "model_state_dict_only", "bare", "state_dict"])
@pytest.mark.parametrize("prefix", ["module.", ""])
def test_read_state_dict_of_every_layout(tmp_path, wrap, prefix):
    state_dict = collections.OrderedDict(
        (prefix + k.removeprefix("module."), v) for k, v in _state_dict().items())
    obj = {"checkpoint": reference_checkpoint(state_dict),
           "model_state_dict_only": {"model_state_dict": state_dict},
           "bare": state_dict, "state_dict": {"state_dict": state_dict, "epoch": 3}}[wrap]
    got = read_state_dict(write_torch_file(tmp_path / "ck.pth", obj))
    assert list(got) == [k.removeprefix("module.") for k in _state_dict()]
    np.testing.assert_array_equal(got["_net.conv1.weight"], state_dict[prefix + "_net.conv1.weight"])


def test_strided_views_offsets_big_endian_and_bfloat16(tmp_path):
    """Hand-built pickle: a transposed view with an offset into a big-endian storage, and a
    bfloat16 tensor (bit patterns widened to float32)."""
    base = np.arange(12, dtype=np.float32)
    bf16_values = np.array([1.5, -2.0, 3.25], np.float32)
    bf16_bits = (bf16_values.view(np.uint32) >> 16).astype(np.uint16)

    def tensor(storage, key, numel, offset, size, stride):
        return (b"ctorch._utils\n_rebuild_tensor_v2\n((X" + _s("storage") + b"ctorch\n"
                + storage + b"\nX" + _s(key) + b"X" + _s("cpu") + b"J" + struct.pack("<i", numel)
                + b"tQJ" + struct.pack("<i", offset) + _tuple(size) + _tuple(stride)
                + b"\x89ccollections\nOrderedDict\n)RtR")

    pkl = (b"\x80\x02}(X" + _s("view") + tensor(b"FloatStorage", "0", 12, 2, (3, 2), (1, 3))
           + b"X" + _s("bf16") + tensor(b"BFloat16Storage", "1", 3, 0, (3,), (1,)) + b"u.")
    path = tmp_path / "views.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x/data.pkl", pkl)
        archive.writestr("x/byteorder", "big")
        archive.writestr("x/data/0", base.astype(">f4").tobytes())
        archive.writestr("x/data/1", bf16_bits.astype(">u2").tobytes())
        archive.writestr("x/version", "3\n")
    got = read_torch_file(path)
    expected = np.lib.stride_tricks.as_strided(base[2:], (3, 2), (4, 12))
    np.testing.assert_array_equal(got["view"], expected)
    np.testing.assert_array_equal(got["bf16"], bf16_values)


def _s(text: str) -> bytes:
    return struct.pack("<I", len(text)) + text.encode()


def _tuple(values) -> bytes:
    return b"(" + b"".join(b"J" + struct.pack("<i", v) for v in values) + b"t"


# === Malicious files: refused, and nothing from them runs ===
class _RunsCommand:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class _Evals:
    def __reduce__(self):
        return (eval, ("__import__('os').system('touch EVAL_RAN')",))


def _archive_with_pickle(path, payload: bytes):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", payload)
        archive.writestr("archive/version", "3\n")
        archive.writestr("archive/byteorder", "little")
    return path


@pytest.mark.parametrize("where", ["top", "inside_optimizer_state"])
def test_a_pickle_that_would_run_a_command_is_refused_and_never_runs(tmp_path, where):
    marker = tmp_path / "PWNED"
    evil = _RunsCommand(f"touch {marker}")
    obj = evil if where == "top" else {
        "model_state_dict": {"w": 1.0}, "optimizer_net_state_dict": {"state": [evil]}}
    path = _archive_with_pickle(tmp_path / "evil.pth", pickle.dumps(obj, protocol=2))
    for read in (read_torch_file, read_state_dict):
        with pytest.raises(TorchCheckpointError) as error:
            read(path)
        message = str(error.value)
        assert str(path) in message and "system" in message and "refusing" in message
    assert not marker.exists()
    # The same pickle does run when unpickled naively (the test would catch a bypass).
    pickle.loads(pickle.dumps(evil, protocol=2))
    assert marker.exists()


def test_eval_and_storage_class_tricks_are_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = _archive_with_pickle(tmp_path / "eval.pt", pickle.dumps(_Evals(), protocol=2))
    with pytest.raises(TorchCheckpointError, match=r"(__builtin__|builtins)\.eval"):
        read_torch_file(path)
    # A persistent id whose "storage type" is a callable it would call.
    pkl = b"\x80\x02((X" + _s("storage") + b"cos\nsystem\nX" + _s("0") + b"tQ."
    with pytest.raises(TorchCheckpointError, match=r"os\.system"):
        read_torch_file(_archive_with_pickle(tmp_path / "pid.pt", pkl))
    # A BUILD on a rebuilt tensor (never in torch files) would call its __setstate__.
    pkl = (b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n((X" + _s("storage")
           + b"ctorch\nFloatStorage\nX" + _s("0") + b"X" + _s("cpu") + b"J\x01\x00\x00\x00tQ"
           + b"J\x00\x00\x00\x00(J\x01\x00\x00\x00t(J\x01\x00\x00\x00t\x89)tR}b.")
    path = tmp_path / "build.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("a/data.pkl", pkl)
        archive.writestr("a/data/0", np.zeros(1, np.float32).tobytes())
    with pytest.raises(TorchCheckpointError, match="BUILD"):
        read_torch_file(path)
    assert not (tmp_path / "EVAL_RAN").exists()


# === Malformed files: one clear error naming the file ===
def test_truncated_damaged_and_foreign_files_give_clear_errors(tmp_path):
    good = write_torch_file(tmp_path / "good.pt", reference_checkpoint(_state_dict()))
    data = good.read_bytes()
    cases = {
        "truncated.pt": data[: len(data) // 2],
        "empty.pt": b"",
        "text.pt": b"not a checkpoint at all\n",
        "legacy.pt": pickle.dumps({"a": 1}, protocol=2),
    }
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
    messages = {}
    for name in cases:
        with pytest.raises(TorchCheckpointError) as error:
            read_state_dict(tmp_path / name)
        messages[name] = str(error.value)
        assert str(tmp_path / name) in messages[name]
    assert "legacy format" in messages["legacy.pt"]
    assert "not a torch.save zip archive" in messages["truncated.pt"]
    # A zip that is not a torch archive (a .keras file, say) and a TorchScript-like one.
    for name, entries in (("other.zip", {"config.json": "{}"}),
                          ("script.pt", {"m/constants.pkl": "", "m/code/x.py": ""})):
        with zipfile.ZipFile(tmp_path / name, "w") as archive:
            for entry, text in entries.items():
                archive.writestr(entry, text)
        with pytest.raises(TorchCheckpointError, match="not a torch.save archive|TorchScript"):
            read_torch_file(tmp_path / name)
        assert not is_torch_file(tmp_path / name)
    assert is_torch_file(good) and not is_torch_file(tmp_path / "text.pt")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        read_torch_file(tmp_path / "missing.pt")


def test_damaged_storages_and_out_of_range_views_are_refused(tmp_path):
    state_dict = {"w": np.arange(6, dtype=np.float32)}
    path = write_torch_file(tmp_path / "ck.pt", state_dict)
    with zipfile.ZipFile(path) as archive:
        entries = {n: archive.read(n) for n in archive.namelist()}
    # A storage entry shorter than its numel says.
    short = dict(entries, **{"archive/data/0": entries["archive/data/0"][:8]})
    # A pickle naming a storage entry that is not in the archive.
    missing = {n: v for n, v in entries.items() if n != "archive/data/0"}
    # A view reaching past its storage (size 7 of a 6-element storage).
    past = dict(entries, **{"archive/data.pkl": entries["archive/data.pkl"].replace(
        b"(J\x06\x00\x00\x00t", b"(J\x07\x00\x00\x00t", 1)})
    for name, files, match in (("short.pt", short, "holds 8 bytes"),
                               ("missing.pt", missing, "has no entry"),
                               ("past.pt", past, "reaching element 6")):
        with zipfile.ZipFile(tmp_path / name, "w") as archive:
            for entry, data in files.items():
                archive.writestr(entry, data)
        with pytest.raises(TorchCheckpointError, match=match):
            read_torch_file(tmp_path / name)


def test_files_without_model_weights_are_refused(tmp_path):
    for name, obj, match in (
            ("list.pt", [np.zeros(2, np.float32)], "holds no model weights"),
            ("opt.pt", {"optimizer_net_state_dict": {"state": {}}}, "holds no model weights"),
            ("mixed.pt", {"model_state_dict": {"w": np.zeros(2, np.float32), "epoch": 3}},
             "not named tensors")):
        with pytest.raises(TorchCheckpointError, match=match):
            read_state_dict(write_torch_file(tmp_path / name, obj))


def test_the_test_writer_emits_what_torch_save_emits():
    """Our writer's pickle uses exactly the globals a real torch.save file of a
    checkpoint uses (checked against torch in bench/torch_parity.py)."""
    import pickletools

    from tests.torch_files import _Emitter

    emitter = _Emitter()
    emitter.emit(reference_checkpoint(_state_dict()))
    globals_used = {arg for op, arg, _ in pickletools.genops(
        io.BytesIO(b"\x80\x02" + emitter.out.getvalue() + b".")) if op.name == "GLOBAL"}
    assert globals_used == {"collections OrderedDict", "torch._utils _rebuild_tensor_v2",
                            "torch FloatStorage", "torch LongStorage", "torch BoolStorage",
                            "torch HalfStorage"}
