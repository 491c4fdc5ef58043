"""The frozen backbone folded (batch norms in its convolutions) against folded and packed
(src/cfa_anomaly/packed_convolutions.py), and packed with its last stage in bfloat16 (model.precision=mixed).

    python benchmarks/packed_backbone.py [--backbones wide_resnet50_2 mobilenet_v2] [--repeats 6]

One process per backbone (random weights unless --pretrained; weights do not change the arithmetic), batch 4
at 224 px, input in float32 on the CPU, the networks alternating, each timed over 3 calls after one warm-up
call; prints ms per image (best and median of --repeats) and, against the folded network, the largest
difference of the maps relative to their largest value, and the last map's relative L2 difference. Note:
timm's random wide_resnet50_2 zero-initialises the last batch norm of every residual block, so with random
weights its last map is the shortcut path's alone; its error figure means something only with --pretrained.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from machine import machine_line

from cfa_anomaly.backbones import FeatureExtractor, fold_batch_norms

Network = tuple[torch.nn.Module | None, torch.nn.ModuleList | None]  # fold_batch_norms: a model or blocks


def run(network: Network, x: torch.Tensor) -> list[torch.Tensor]:
    model, blocks = network
    if blocks is None:
        return list(model(x))
    outputs = []
    for block in blocks:
        x = block(x)
        outputs.append(x)
    return outputs


def compare(name: str, repeats: int, batch: int, pretrained: bool) -> None:
    extractor = FeatureExtractor(name, pretrained=pretrained)
    images = torch.rand(batch, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    x = ((images - extractor.mean) / extractor.std).contiguous(memory_format=torch.channels_last)
    networks = {"folded": fold_batch_norms(extractor.model, extractor.blocks),
                "folded+packed": fold_batch_norms(extractor.model, extractor.blocks, pack=True)}
    last_stage = extractor.last_stage()
    if last_stage:
        networks["packed, bf16 last"] = fold_batch_norms(extractor.model, extractor.blocks, pack=True,
                                                         last_stage=last_stage)
    times: dict[str, list[float]] = {key: [] for key in networks}
    with torch.inference_mode():
        maps = {key: run(network, x) for key, network in networks.items()}
        for _ in range(repeats):
            for key, network in networks.items():
                run(network, x)
                start = time.perf_counter()
                for _ in range(3):
                    run(network, x)
                times[key].append(1000 * (time.perf_counter() - start) / (3 * batch))
    best = {key: min(values) for key, values in times.items()}
    reference = maps["folded"]
    for key, values in times.items():
        largest = max(((a.float() - b).abs().max() / b.abs().max()).item()
                      for a, b in zip(maps[key], reference))
        last = ((maps[key][-1].float() - reference[-1]).norm() / reference[-1].norm()).item()
        median = statistics.median(values)
        print(f"  {name:18s} {key:17s} best {best[key]:6.1f} ms/img  median {median:5.1f}  "
              f"x{best['folded'] / best[key]:.2f} over folded; largest map difference {largest:.1e}, "
              f"last map {last:.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", nargs="+", default=["wide_resnet50_2", "mobilenet_v2"])
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--pretrained", action="store_true", help="ImageNet weights (offline backbones)")
    args = parser.parse_args()
    print(machine_line())
    weights = "ImageNet" if args.pretrained else "random"
    print(f"backbone alone, {weights} weights, batch {args.batch} at 224 px, best of {args.repeats}")
    for name in args.backbones:
        compare(name, args.repeats, args.batch, args.pretrained)


if __name__ == "__main__":
    main()
