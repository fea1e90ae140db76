"""The authors' PyTorch PIP-Net forward/training step, timed on this CPU (the baseline of
the speed targets in issues #3 and #6).

The reference builds its backbones from torchvision (SPEC §1): ConvNeXt-Tiny with
`avgpool`/`classifier` replaced by identities and every stride-2 `Conv2d` with more than
100 (`convnext_tiny_26`) or 300 (`convnext_tiny_13`) input channels set to stride 1;
ResNet-50 with `layer3`/`layer4` at stride 1. The head is the reference's: softmax over
the channels at every cell, global max pool, `NonNegLinear` (relu(W)) to K classes,
presence < 0.1 zeroed at inference. This script rebuilds exactly that with torchvision's
modules and times it as `bench/backbone_speed.py` times ours (224 px, batch 8, median of
`--runs` after `--warmup`; training = one second-phase step on two views of B images,
loss and AdamW as the reference's `train_pipnet`), with `torch.set_num_threads(--threads)`.

PyTorch is not a dependency of pipnet-tf; run this from its own virtual environment:

    python3 -m venv /tmp/tvvenv
    /tmp/tvvenv/bin/pip install torch==2.14.1 torchvision==0.29.1 numpy
    /tmp/tvvenv/bin/python bench/reference_torch.py --backbones=convnext_tiny_13 --modes=infer

On a GPU (`--device cuda`, a CUDA build of torch) it times the same steps there, with
`torch.cuda.synchronize()` around each so that the times include the GPU work, for a
side-by-side comparison with `bench/gpu_check.sh`'s throughput at batch 64:

    /tmp/tvvenv/bin/python bench/reference_torch.py --device cuda --batch 64 \
        --backbones=convnext_tiny_26 --modes=train

Prints one JSON line per backbone and mode.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys
import time


def build(name: str, num_classes: int = 200):
    """The reference network (`bench/torch_parity.py`, which also checks that our converted
    checkpoints reproduce its outputs)."""
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
    from bench.torch_parity import build_reference

    return build_reference(name, num_classes)


def _loss(model, x1, x2, y):
    """SPEC §2 with λ_A = 5, λ_T = 2, λ_C = 2 (second phase)."""
    import torch
    import torch.nn.functional as F

    proto, pooled, out = model(torch.cat([x1, x2]))
    pf1, pf2 = proto.chunk(2)
    embv1 = pf1.flatten(start_dim=2).permute(0, 2, 1).flatten(end_dim=1)
    embv2 = pf2.flatten(start_dim=2).permute(0, 2, 1).flatten(end_dim=1)
    align = -torch.log((embv1 * embv2.detach()).sum(dim=1) + 1e-8).mean()
    p1, p2 = pooled.chunk(2)
    tanh = (-torch.log(torch.tanh(p1.sum(0)) + 1e-8).mean()
            - torch.log(torch.tanh(p2.sum(0)) + 1e-8).mean())
    logits = torch.log1p(out ** 2)
    cls = F.nll_loss(F.log_softmax(logits, dim=1), torch.cat([y, y]))
    return 5.0 * align + 2.0 * tanh + 2.0 * cls


def measure(name: str, modes: list[str], batch: int, size: int, warmup: int, runs: int,
            device: str = "cpu") -> list:
    import torch

    torch.manual_seed(1)
    model = build(name).to(device)
    x = torch.rand(batch, 3, size, size, device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    results = []
    if "infer" in modes:
        model.eval()
        times = []
        with torch.no_grad():
            for _ in range(warmup + runs):
                sync()
                start = time.perf_counter()
                model(x, inference=True)
                sync()
                times.append(time.perf_counter() - start)
        step = statistics.median(times[warmup:])
        results.append({"backbone": name, "mode": "infer", "batch": batch, "step_s": step,
                        "img_per_s": batch / step, "best_img_per_s": batch / min(times[warmup:]),
                        "times_s": times})
    if "train" in modes:
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
        x2 = torch.rand(batch, 3, size, size, device=device)
        y = torch.randint(0, 200, (batch,), device=device)
        times = []
        for _ in range(warmup + runs):
            sync()
            start = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            _loss(model, x, x2, y).backward()
            optimizer.step()
            sync()
            times.append(time.perf_counter() - start)
        step = statistics.median(times[warmup:])
        results.append({"backbone": name, "mode": "train", "batch": batch, "step_s": step,
                        "pairs_per_s": batch / step, "times_s": times})
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbones", default="convnext_tiny_26,convnext_tiny_13,resnet50")
    parser.add_argument("--modes", default="infer,train")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    args = parser.parse_args(argv)

    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: torch {torch.__version__} sees no CUDA GPU "
                     f"(built for CUDA {torch.version.cuda or 'none: install a CUDA build'}; "
                     "check nvidia-smi)")
    torch.set_num_threads(args.threads)
    for name in args.backbones.split(","):
        for result in measure(name, args.modes.split(","), args.batch, args.image_size,
                              args.warmup, args.runs, args.device):
            result.update(torch=torch.__version__, threads=args.threads, device=args.device,
                          loadavg_1min=os.getloadavg()[0])
            if args.device.startswith("cuda"):
                result["gpu"] = torch.cuda.get_device_name(torch.device(args.device))
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
