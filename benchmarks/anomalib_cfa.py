"""anomalib's CFA timed as benchmarks/speed.py times this project (not a test; run by anomalib's own venv).

    .venv-anomalib/bin/python benchmarks/anomalib_cfa.py --images 16 --epochs 2 --batch 4 [--device cuda]

Run by benchmarks/vs_anomalib.py with the Python of the virtual environment it sets up for anomalib,
which pins its own dependencies; this script imports nothing of cfa_anomaly. It builds anomalib's torch
model (`anomalib.models.image.cfa.torch_model.CfaModel`) with torchvision's backbone at random weights
(anomalib would download ImageNet weights; weights do not change the arithmetic) and does what its
Lightning module does, without the Lightning trainer: the memory bank from a pass over the training
images (`initialize_centroid`, the `on_train_start` hook), then per batch the training-mode forward
(backbone, descriptor, all distances), `CfaLoss`, `backward(retain_graph=True)` and an AdamW step with
the module's settings; inference is the eval-mode forward (anomaly maps and scores) under
`torch.inference_mode`. Prints one JSON line with the keys of speed.py's --single mode. On a GPU the images
are moved there before the timings (as speed.py does) and the peak GPU memory is added.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import resource
import time
from types import SimpleNamespace

os.environ.setdefault("TQDM_DISABLE", "1")  # initialize_centroid shows a progress bar

import torch
import torchvision
from anomalib.models.image.cfa import torch_model
from anomalib.models.image.cfa.loss import CfaLoss
from torchvision.models.feature_extraction import create_feature_extractor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def offline_feature_extractor(backbone: str, return_nodes: list[str]) -> torch.nn.Module:
    """anomalib's get_feature_extractor with random weights instead of a download."""
    model = getattr(torchvision.models, backbone)(weights=None)
    return create_feature_extractor(model=model, return_nodes=return_nodes).eval()


def build(backbone: str, seed: int) -> tuple[torch_model.CfaModel, CfaLoss]:
    """The torch model and loss as anomalib's Cfa Lightning module builds them, with its defaults."""
    torch_model.get_feature_extractor = offline_feature_extractor  # the module looks the name up at call time
    torch.manual_seed(seed)
    model = torch_model.CfaModel(backbone=backbone, gamma_c=1, gamma_d=1, num_nearest_neighbors=3,
                                 num_hard_negative_features=3, radius=1e-5)
    loss = CfaLoss(num_nearest_neighbors=3, num_hard_negative_features=3, radius=1e-5)
    return model, loss


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timing_run(backbone: str, images: int, epochs: int, batch: int, device: torch.device) -> dict:
    model, loss_fn = build(backbone, seed=0)
    model, loss_fn = model.to(device), loss_fn.to(device)
    generator = torch.Generator().manual_seed(0)
    data = torch.rand(images, 3, 224, 224, generator=generator)  # the same images as speed.py's
    # anomalib's pre-processor normalises outside the torch model; done once here, not timed
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    data = ((data - mean) / std).to(device)
    loader = [SimpleNamespace(image=data[i: i + batch]) for i in range(0, images, batch)]

    synchronize(device)
    start = time.perf_counter()
    model.initialize_centroid(loader)
    synchronize(device)
    bank_seconds = time.perf_counter() - start

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=5e-4, amsgrad=True)
    model.train()
    start = time.perf_counter()
    for _ in range(epochs):
        for part in loader:
            optimizer.zero_grad()
            loss = loss_fn(model(part.image))
            loss.backward(retain_graph=True)
            optimizer.step()
    synchronize(device)
    train_seconds = time.perf_counter() - start

    model.eval()
    with torch.inference_mode():
        model(data[:batch])  # warm-up, as in speed.py
        synchronize(device)
        start = time.perf_counter()
        for part in loader:
            model(part.image)
        synchronize(device)
        infer_seconds = time.perf_counter() - start
    return {
        "variant": "anomalib",
        "anomalib_version": importlib.metadata.version("anomalib"),
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "bank_ms_per_image": 1000 * bank_seconds / images,
        "train_ms_per_image_epoch": 1000 * train_seconds / (images * max(epochs, 1)),
        "inference_images_per_second": images / infer_seconds,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "peak_gpu_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="wide_resnet50_2")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    print(json.dumps(timing_run(args.backbone, args.images, args.epochs, args.batch, torch.device(args.device))))


if __name__ == "__main__":
    main()
