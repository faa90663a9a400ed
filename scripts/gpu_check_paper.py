"""Chapter 7's ``SCALE = "paper"`` path on a synthetic ImageFolder, with the automatic batch sizes and precision, and
its peak memory beside the memory model's prediction (a step of ``scripts/gpu_check.sh``)::

    python scripts/gpu_check_paper.py --device cuda --out RESULT.json             # 224 px, T = 10, both presets
    python scripts/gpu_check_paper.py --device cpu --smoke --out RESULT.json      # 32 px, T = 1, PEfficientNetB0 only

Untrained backbones (``weights=None``: no internet needed); the numbers that matter are the batches chosen, the
peak memory (``torch.cuda.max_memory_allocated`` on a GPU; the process's peak resident memory on the CPU) and
that every stage runs.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import resource
import sys
import tempfile
import time

import numpy as np
import torch
from PIL import Image

from pcnet.experiments import devices, memory
from pcnet.experiments import paper_scale as ps


def synthetic_folder(root: pathlib.Path, *, per_class: int, size: int) -> dict:
    """train/ and val/ with two Imagenette classes of random images (an ImageFolder like Imagenette's)."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for wnid in ps.IMAGENETTE_WNIDS[:2]:
            folder = root / split / wnid
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return {"train": root / "train", "val": root / "val"}


def config(*, smoke: bool, device, cache_dir) -> dict:
    common = dict(seed=0, batch_size="auto", attack_batch="auto", n_boot=200, cache_dir=cache_dir,
                  precision=devices.amp_precision(device))
    if smoke:
        return dict(common, image_size=32, timesteps=1, n_eval=4, sigmas=[0.1], corruptions=["saturate"],
                    severities=[1], n_corrupt=2, n_attack=2, eps=[2 / 255], attack_steps=1, ram_limit=8 * memory.GIB,
                    train=dict(epochs=1, batch_size=2, lr=1e-3, workers=0, max_steps=1))
    from pcnet.experiments.corruptions import ALL
    return dict(common, image_size=224, timesteps=10, n_eval=32, sigmas=[0.0, 0.1], corruptions=list(ALL),
                severities=[3], n_corrupt=4, n_attack=8, eps=[2 / 255], attack_steps=5,
                train=dict(epochs=1, batch_size=16, lr=1e-3, workers=2, max_steps=4))


def run(preset: str, *, folders, device, cfg) -> dict:
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    out = ps.run_paper(preset, data=folders, weights=None, feedback=None, device=device, cfg=cfg, progress=False)
    seconds = time.perf_counter() - start
    est = memory.attack_bytes_per_image(out["net"])
    predicted = est.params + out["attack_batch"] * est.per_image(cfg["timesteps"]) * memory.BACKWARD_FACTOR
    peak = (torch.cuda.max_memory_allocated(device) if cuda
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)  # Linux: KiB
    dyn = out["noise"]["correct"][cfg["sigmas"][0]]["dynamics"].float().mean(-1)  # (T+1,)
    return {"preset": preset, "device": str(device), "precision": cfg["precision"] or "fp32",
            "image_size": cfg["image_size"], "timesteps": cfg["timesteps"], "batch_size": out["batch_size"],
            "attack_batch": out["attack_batch"], "estimate": str(est), "predicted_attack_mib": predicted / 2 ** 20,
            "peak_mib": peak / 2 ** 20, "peak_source": "torch.cuda.max_memory_allocated" if cuda else "ru_maxrss",
            "corruptions": len(out["corruption_names"]), "seconds": seconds,
            "accuracy_t0_tT": [float(dyn[0]), float(dyn[-1])]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--smoke", action="store_true", help="32 px, T = 1, PEfficientNetB0 only: the CPU check in make test")
    parser.add_argument("--out", required=True, help="JSON file for the results")
    args = parser.parse_args(argv)
    device = devices.resolve(args.device, name="--device")
    presets = ("pefficientnet_b0",) if args.smoke else ("pvgg16", "pefficientnet_b0")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        folders = synthetic_folder(tmp / "data", per_class=4 if args.smoke else 16, size=40 if args.smoke else 256)
        cfg = config(smoke=args.smoke, device=device, cache_dir=tmp / "imagenet_c")
        results = [run(p, folders=folders, device=device, cfg=cfg) for p in presets]
    for r in results:
        print(f"{r['preset']}: {r['precision']}, {r['image_size']} px, T = {r['timesteps']}: BATCH = {r['batch_size']}, "
              f"ATTACK_BATCH = {r['attack_batch']}; peak {r['peak_mib']:.0f} MiB ({r['peak_source']}), attack "
              f"predicted {r['predicted_attack_mib']:.0f} MiB; {r['seconds']:.0f} s")
    pathlib.Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
