"""Parity of converted checkpoints with the authors' PyTorch PIP-Net (issue #11).

Two stages in two virtual environments (PyTorch is not a dependency of pipnet-tf):

1. `--stage=reference`, in a torch venv: builds the reference network from torchvision's
   modules as SPEC §1 says (ConvNeXt-Tiny with avgpool/classifier replaced by identities
   and the stride rule; ResNet-50 as the reference's `ResNet_features`, layer3/layer4 at
   stride 1), wrapped as the reference's `PIPNet` (`_net`, `_add_on` = softmax,
   `_classification` = NonNegLinear with `normalization_multiplier`, `_multiplier`),
   gives every parameter and BatchNorm buffer random values of realistic scales, takes
   one AdamW step (so the file holds optimiser state, ~320 MB for ConvNeXt as the
   published files), saves it as `main.py` does (`nn.DataParallel` → `module.` keys,
   `torch.save({'model_state_dict', 'optimizer_net_state_dict',
   'optimizer_classifier_state_dict'})`) and runs `forward(x, inference=False/True)` in
   `eval()` on a few 224-px images. It also checks that files written by our test helper
   (`tests/torch_files.py`) load with `torch.load(weights_only=True)` and into the
   reference model with `load_state_dict(strict=True)`.
2. `--stage=compare`, in pipnet-tf's venv: reads each checkpoint with our reader
   (`pipnet_tf.torch_checkpoint`), converts it (`export.from_torch`, timed, peak RSS
   measured with /usr/bin/time), runs the Keras model on the same images (NHWC) and
   reports max |difference| of proto_features, pooled and out in both modes. With
   `--exports`, the converted 224-px ConvNeXt also goes through `export.saved_model`'s
   verification gate and `export.tflite`'s parity gates.

Without `--stage`, runs both (the reference stage with `--torch_python`):

    python3 -m venv /tmp/tvvenv
    /tmp/tvvenv/bin/pip install torch==2.14.1 torchvision==0.29.1 numpy pillow
    KERAS_BACKEND=tensorflow .venv/bin/python -m bench.torch_parity \
        --torch_python=/tmp/tvvenv/bin/python --work_dir=/tmp/parity --exports

Prints one JSON line per net (and per export), then a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
NETS = ("convnext_tiny_26", "convnext_tiny_13", "resnet50")
NUM_CLASSES = 200
SIZE = 224
TARGET = 1e-4


def images(n: int = 4, size: int = SIZE, seed: int = 0):
    """Smooth random uint8 RGB images (N, H, W, 3), more photo-like than white noise."""
    import numpy as np

    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (n, 8, 8, 3))
    x = np.repeat(np.repeat(coarse, size // 8, axis=1), size // 8, axis=2)
    return np.clip(x + rng.normal(0, 20, x.shape), 0, 255).astype(np.uint8)


# === Stage 1: PyTorch (torch venv) ===
def build_reference(net: str, num_classes: int = NUM_CLASSES):
    """The reference's PIPNet for `net` (SPEC §1), with torchvision's default init."""
    import torch
    import torchvision
    from torch import nn

    if net.startswith("convnext_tiny"):
        threshold = {"convnext_tiny_26": 100, "convnext_tiny_13": 300}[net]
        feature_net = torchvision.models.convnext_tiny(weights=None)
        feature_net.avgpool, feature_net.classifier = nn.Identity(), nn.Identity()
        for module in feature_net.modules():
            if (isinstance(module, nn.Conv2d) and module.stride == (2, 2)
                    and module.in_channels > threshold):
                module.stride = (1, 1)
        channels = 768
    else:
        resnet = torchvision.models.resnet50(weights=None)
        for layer in (resnet.layer3, resnet.layer4):  # stride on conv2 and downsample.0
            for module in layer[0].modules():
                if isinstance(module, nn.Conv2d) and module.stride == (2, 2):
                    module.stride = (1, 1)

        class ResNetFeatures(nn.Module):
            """The reference's ResNet_features: the torchvision modules, no pool/fc."""

            def __init__(self):
                super().__init__()
                for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3",
                             "layer4"):
                    setattr(self, name, getattr(resnet, name))

            def forward(self, x):
                x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
                return self.layer4(self.layer3(self.layer2(self.layer1(x))))

        feature_net, channels = ResNetFeatures(), 2048

    class NonNegLinear(nn.Module):
        def __init__(self, in_features, out_features):
            super().__init__()
            self.weight = nn.Parameter(torch.normal(1.0, 0.1, (out_features, in_features)))
            self.normalization_multiplier = nn.Parameter(torch.ones((1,)))
            self.bias = None

        def forward(self, x):
            return nn.functional.linear(x, torch.relu(self.weight), self.bias)

    class PIPNet(nn.Module):
        def __init__(self):
            super().__init__()
            self._net = feature_net
            self._add_on = nn.Sequential(nn.Softmax(dim=1))
            self._pool = nn.Sequential(nn.AdaptiveMaxPool2d(output_size=(1, 1)), nn.Flatten())
            self._classification = NonNegLinear(channels, num_classes)
            self._multiplier = self._classification.normalization_multiplier

        def forward(self, xs, inference=False):
            proto_features = self._add_on(self._net(xs))
            pooled = self._pool(proto_features)
            if inference:
                pooled = torch.where(pooled < 0.1, 0.0, pooled)
            return proto_features, pooled, self._classification(pooled)

    return PIPNet()


def randomize(model, seed: int = 0, feature_scale: float = 4.0) -> None:
    """Every parameter and float buffer gets random values of a plausible scale: conv and
    linear weights N(0, 1/fan_in), norm scales U(0.5, 1.5), biases N(0, 0.1), BatchNorm
    running stats, layer scales U(0.2, 1) (× `feature_scale` in the last block and on the
    last BN scale, so that presence has peaks; larger: closer to 0 or 1, as trained) and a sparse scoring sheet (each prototype votes for
    one random class with probability 0.5, weight U(0.5, 3): sparsity ≈ 0.997, as trained
    sheets are sparse; a dense random sheet has near-tied classes that any rounding flips)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
            leaf = name.rsplit(".", 1)[-1]
            if not tensor.is_floating_point():
                continue
            shape = tensor.shape
            if name.endswith("_classification.weight"):  # (K, D): sparse, as after training
                value = torch.zeros(shape)
                voters = torch.nonzero(torch.rand(shape[1], generator=gen) < 0.5)[:, 0]
                classes = torch.randint(0, shape[0], (len(voters),), generator=gen)
                value[classes, voters] = torch.rand(len(voters), generator=gen) * 2.5 + 0.5
            elif leaf in ("normalization_multiplier", "_multiplier"):
                value = torch.full(shape, 2.0)
            elif leaf == "running_var":
                value = torch.rand(shape, generator=gen) + 0.5
            elif leaf == "running_mean":
                value = torch.randn(shape, generator=gen) * 0.1
            elif leaf == "layer_scale":
                value = torch.rand(shape, generator=gen) * 0.8 + 0.2
            elif leaf == "weight" and tensor.ndim == 1:
                value = torch.rand(shape, generator=gen) + 0.5
            elif leaf == "weight":
                value = torch.randn(shape, generator=gen) / float(shape[1:].numel()) ** 0.5
            else:
                value = torch.randn(shape, generator=gen) * 0.1
            if "features.7.2.layer_scale" in name or "layer4.2.bn3.weight" in name:
                value = value * feature_scale
            tensor.copy_(value)


def save_like_main_py(model, path: pathlib.Path) -> None:
    """nn.DataParallel, two AdamW optimisers with one step each, then torch.save of the
    dict main.py writes."""
    import torch
    from torch import nn

    net = nn.DataParallel(model)
    classifier = [p for n, p in net.named_parameters() if "_classification" in n]
    network = [p for n, p in net.named_parameters() if "_classification" not in n]
    optimizer_net = torch.optim.AdamW(network, lr=0.0)  # lr 0: state, unchanged weights
    optimizer_classifier = torch.optim.AdamW(classifier, lr=0.0, weight_decay=0.0)
    for p in network + classifier:
        p.grad = torch.randn_like(p) * 1e-3
    optimizer_net.step()
    optimizer_classifier.step()
    torch.save({"model_state_dict": net.state_dict(),
                "optimizer_net_state_dict": optimizer_net.state_dict(),
                "optimizer_classifier_state_dict": optimizer_classifier.state_dict()}, path)


def check_our_writer(work_dir: pathlib.Path) -> dict:
    """Files from tests/torch_files.py load with torch.load(weights_only=True), equal, and
    fit the reference model (strict load_state_dict)."""
    import numpy as np
    import torch

    sys.path.insert(0, str(ROOT))
    from tests.torch_files import reference_checkpoint, reference_state_dict, write_torch_file

    report = {}
    for net in ("convnext_tiny_26", "resnet50"):
        state_dict = reference_state_dict(net, num_classes=NUM_CLASSES, seed=1)
        path = write_torch_file(work_dir / f"ours_{net}.pt", reference_checkpoint(state_dict))
        loaded = torch.load(path, weights_only=True)
        equal = all(np.array_equal(loaded["model_state_dict"][k].numpy(), v)
                    for k, v in state_dict.items())
        model = build_reference(net)
        model.load_state_dict({k.removeprefix("module."): v
                               for k, v in loaded["model_state_dict"].items()}, strict=True)
        report[net] = {"torch_load_weights_only": True, "values_equal": equal,
                       "strict_load_into_reference": True}
    return report


def run_reference(work_dir: pathlib.Path, nets, num_images: int, feature_scale: float) -> None:
    import numpy as np
    import torch

    torch.set_num_threads(2)
    x_uint8 = images(num_images)
    np.save(work_dir / "images.npy", x_uint8)
    mean = np.array([0.485, 0.456, 0.406]).reshape(1, 3, 1, 1)
    std = np.array([0.229, 0.224, 0.225]).reshape(1, 3, 1, 1)
    x = torch.from_numpy(((x_uint8.transpose(0, 3, 1, 2) / 255.0 - mean) / std)
                         .astype(np.float32))  # ToTensor → Normalize
    for i, net in enumerate(nets):
        torch.manual_seed(i)
        model = build_reference(net)
        randomize(model, seed=i, feature_scale=feature_scale)
        model.eval()
        path = work_dir / f"{net}.pth"
        save_like_main_py(model, path)
        outputs = {}
        with torch.no_grad():
            for inference in (False, True):
                proto, pooled, out = model(x, inference=inference)
                tag = "inference" if inference else "raw"
                outputs.update({f"proto_features_{tag}": proto.numpy(),
                                f"pooled_{tag}": pooled.numpy(), f"out_{tag}": out.numpy()})
        np.savez(work_dir / f"{net}_reference.npz", **outputs)
        print(json.dumps({"stage": "reference", "net": net, "checkpoint": str(path),
                          "bytes": path.stat().st_size,
                          "present_fraction": float((outputs["pooled_raw"] >= 0.1).mean())}),
              flush=True)
    print(json.dumps({"stage": "reference", "our_writer": check_our_writer(work_dir),
                      "torch": torch.__version__}), flush=True)


# === Stage 2: pipnet-tf ===
def convert_with_cli(checkpoint: pathlib.Path, net: str, out: pathlib.Path) -> dict:
    """Runs `python -m export.from_torch` under /usr/bin/time: wall seconds, peak RSS."""
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    command = ["/usr/bin/time", "-f", "TIME %e %M", sys.executable, "-m", "export.from_torch",
               "--checkpoint", str(checkpoint), "--net", net, "--out", str(out)]
    proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    seconds, rss_kb = proc.stderr.strip().splitlines()[-1].split()[1:]
    return {"cli_seconds": float(seconds), "cli_peak_rss_gb": int(rss_kb) / 2 ** 20,
            "summary": proc.stdout.strip()}


def run_compare(work_dir: pathlib.Path, nets, exports: bool) -> list[dict]:
    import numpy as np

    from pipnet_tf.reference_checkpoint import build_pipnet
    from pipnet_tf.torch_checkpoint import read_state_dict

    x_uint8 = np.load(work_dir / "images.npy")
    x = x_uint8.astype("float32")
    rows = []
    for net in nets:
        checkpoint = work_dir / f"{net}.pth"
        reference = np.load(work_dir / f"{net}_reference.npz")
        start = time.perf_counter()
        model = build_pipnet(read_state_dict(checkpoint), net, SIZE)
        row = {"net": net, "checkpoint_mb": checkpoint.stat().st_size / 1e6,
               "in_process_convert_s": time.perf_counter() - start}
        for tag, kwargs in (("raw", {"apply_threshold": False}), ("inference", {})):
            got = model(x, training=False, **kwargs)
            row[f"proto_features_{tag}"] = float(np.abs(
                got["proto_features"].numpy() - reference[f"proto_features_{tag}"]
                .transpose(0, 2, 3, 1)).max())
            row[f"pooled_{tag}"] = float(np.abs(got["presence"].numpy()
                                                - reference[f"pooled_{tag}"]).max())
            row[f"out_{tag}"] = float(np.abs(got["scores"].numpy()
                                             - reference[f"out_{tag}"]).max())
        row["max_out"] = float(np.abs(reference["out_raw"]).max())
        row["present_fraction"] = float((reference["pooled_raw"] >= 0.1).mean())
        row["within_target"] = all(row[k] <= TARGET for k in row if k.startswith(
            ("proto_features_", "pooled_", "out_")))
        row.update(convert_with_cli(checkpoint, net, work_dir / f"run_{net}"))
        print(json.dumps(row), flush=True)
        rows.append(row)
        if exports and net == "convnext_tiny_26":
            run_exports(work_dir / f"run_{net}", x_uint8, work_dir)
    return rows


def run_exports(run_dir: pathlib.Path, heldout, work_dir: pathlib.Path) -> None:
    """The converted 224-px model through the SavedModel verification gate and the TFLite
    parity gates (held-out images: the bench images and 28 more)."""
    import numpy as np

    from export.saved_model import export_saved_model
    from export.tflite import ParityError, export_tflite
    from pipnet_tf.runs import open_run

    run = open_run(run_dir)
    start = time.perf_counter()
    export_saved_model(run.model, work_dir / "saved_model", run.image_size,
                       class_names=run.class_names)
    print(json.dumps({"export": "saved_model", "verified": True,
                      "seconds": time.perf_counter() - start}), flush=True)
    heldout = np.concatenate([heldout, images(28, seed=1)])
    calibration = images(16, seed=2)
    for quantization in ("none", "float16", "dynamic", "int8"):
        start = time.perf_counter()
        try:
            figures = export_tflite(run.model, work_dir / f"pipnet_{quantization}.tflite",
                                    run.image_size, quantization, heldout, calibration)
        except ParityError as error:
            figures = json.loads((work_dir / f"pipnet_{quantization}.json").read_text())
            figures["error"] = str(error)
        print(json.dumps({"export": f"tflite_{quantization}", "passed": figures["passed"],
                          "max_rel_score_diff": figures["max_rel_score_diff"],
                          "top1_agreement": figures["top1_agreement"],
                          "abstention_disagreement": figures["abstention_disagreement"],
                          "seconds": time.perf_counter() - start}), flush=True)


def markdown(rows: list[dict]) -> str:
    lines = ["| net | proto_features (raw / inference) | pooled | out | max out | "
             "convert CLI s | peak RSS GB | file MB |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['net']} | {r['proto_features_raw']:.1e} / {r['proto_features_inference']:.1e}"
            f" | {r['pooled_raw']:.1e} / {r['pooled_inference']:.1e} | {r['out_raw']:.1e} / "
            f"{r['out_inference']:.1e} | {r['max_out']:.0f} | {r['cli_seconds']:.1f} | "
            f"{r['cli_peak_rss_gb']:.2f} | {r['checkpoint_mb']:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stage", choices=("reference", "compare"), default=None)
    parser.add_argument("--torch_python", default="/tmp/tvvenv/bin/python")
    parser.add_argument("--work_dir", default="/tmp/pipnet_parity")
    parser.add_argument("--nets", default=",".join(NETS))
    parser.add_argument("--num_images", type=int, default=4)
    parser.add_argument("--exports", action="store_true")
    parser.add_argument("--feature_scale", type=float, default=4.0,
                        help="scale of the last block's output (sharper presence when larger)")
    args = parser.parse_args(argv)
    work_dir = pathlib.Path(args.work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    nets = args.nets.split(",")
    if args.stage == "reference":
        run_reference(work_dir, nets, args.num_images, args.feature_scale)
        return
    if args.stage is None:
        subprocess.run([args.torch_python, "-m", "bench.torch_parity", "--stage=reference",
                        f"--work_dir={work_dir}", f"--nets={args.nets}",
                        f"--num_images={args.num_images}",
                        f"--feature_scale={args.feature_scale}"], check=True, cwd=ROOT)
    rows = run_compare(work_dir, nets, args.exports)
    print(markdown(rows))


if __name__ == "__main__":
    main()
