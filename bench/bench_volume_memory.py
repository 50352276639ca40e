"""Measure peak memory while iterating over many volumes with ``iter_volume_slices``.

The reader keeps one volume in memory at a time, so the peak should stay flat as the
number of volumes grows. For each count the script iterates over that many volumes,
saves every yielded slice as PNG (as the runner does) and records:

- the tracemalloc peak (Python and numpy allocations, reset per count), and
- the process's maximum resident set size (ru_maxrss, never reset, so it only grows
  when a later, larger count needs more memory than every earlier one).

Volumes are the BraTS sample cases read repeatedly when the shared data folder exists,
and synthetic NIfTI volumes of the same size written to a temporary folder.

Usage:
    PYTHONPATH=engine python bench/bench_volume_memory.py [--counts 1 2 4 8]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from medground.io.volume import VolumeConfig, iter_volume_slices, save_slice_png

REPO_ROOT = Path(__file__).resolve().parents[1]
BRATS_LABELS = {1: "necrosis", 2: "oedema", 3: "non-enhancing tumour", 4: "enhancing tumour"}
SYNTHETIC_SHAPE = (240, 240, 155)


def machine_summary() -> str:
    """Describe the cores, memory and library versions the figures were measured with."""
    total_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return (
        f"machine: {os.cpu_count()} cores, {total_bytes / 2**30:.1f} GiB RAM, "
        f"{platform.machine()}, Python {platform.python_version()}, numpy {np.__version__}, "
        f"nibabel {nib.__version__}"
    )


def brats_pairs() -> list[tuple[Path, Path]]:
    shared = Path(os.environ.get("MGR_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
    root = shared / "brats2015-deepmedic" / "brats2015TrainingData"
    return [
        (label.parent / "Flair_subtrMeanDivStd.nii.gz", label)
        for label in sorted(root.glob("*/*/OTMultiClass.nii.gz"))
    ]


def write_synthetic_pairs(folder: Path, count: int) -> list[tuple[Path, Path]]:
    """Write ``count`` float32 images with a spherical two-label lesion each."""
    rng = np.random.default_rng(0)
    grid = np.indices(SYNTHETIC_SHAPE, dtype=np.float32)
    pairs = []
    for index in range(count):
        centre = rng.uniform(60, 180, size=3)
        centre[2] = rng.uniform(40, 115)
        distance = np.sqrt(sum((grid[axis] - centre[axis]) ** 2 for axis in range(3)))
        labels = np.zeros(SYNTHETIC_SHAPE, dtype=np.uint8)
        labels[distance < 25] = 1
        labels[distance < 10] = 2
        image = rng.normal(0.0, 1.0, size=SYNTHETIC_SHAPE).astype(np.float32) + labels
        image_path = folder / f"case{index:02d}_image.nii.gz"
        label_path = folder / f"case{index:02d}_labels.nii.gz"
        nib.save(nib.Nifti1Image(image, np.diag([-1.0, -1.0, 1.0, 1.0])), image_path)
        nib.save(nib.Nifti1Image(labels, np.diag([-1.0, -1.0, 1.0, 1.0])), label_path)
        pairs.append((image_path, label_path))
    return pairs


def measure(
    pairs: Sequence[tuple[Path, Path]], count: int, config: VolumeConfig, out_dir: Path
) -> tuple[float, float, int, float]:
    """Iterate over ``count`` volumes (cycling through ``pairs``) and save every slice.

    Returns:
        tracemalloc peak in MiB, ru_maxrss in MiB, slices yielded, seconds.
    """
    tracemalloc.start()
    started = time.perf_counter()
    slice_count = 0
    for volume_index in range(count):
        image_path, label_path = pairs[volume_index % len(pairs)]
        for item in iter_volume_slices(image_path, label_path, config):
            save_slice_png(item.image, out_dir / f"v{volume_index}_{item.index}.png")
            slice_count += 1
    elapsed = time.perf_counter() - started
    _current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # ru_maxrss is in KiB on Linux.
    max_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return peak / 2**20, max_rss_mib, slice_count, elapsed


def run(
    source: str,
    pairs: Sequence[tuple[Path, Path]],
    config: VolumeConfig,
    counts: Sequence[int],
    out_dir: Path,
) -> None:
    print(
        f"\n{source}: {len(pairs)} distinct volumes, plane {config.plane}, "
        f"strategy {config.strategy}"
    )
    print(
        f"{'volumes':>8} {'slices':>7} {'tracemalloc peak MiB':>21} {'max RSS MiB':>12} "
        f"{'seconds':>8}"
    )
    for count in counts:
        peak, max_rss, slices, seconds = measure(pairs, count, config, out_dir)
        print(f"{count:>8} {slices:>7} {peak:>21.1f} {max_rss:>12.1f} {seconds:>8.1f}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--counts",
        type=int,
        nargs="+",
        default=[1, 2, 4, 8],
        help="numbers of volumes to iterate over, one measurement each",
    )
    parser.add_argument(
        "--synthetic", type=int, default=4, help="distinct synthetic volumes to write (default 4)"
    )
    args = parser.parse_args(argv)

    print(machine_summary())
    with tempfile.TemporaryDirectory(prefix="mgr-bench-") as temporary:
        temporary_dir = Path(temporary)
        out_dir = temporary_dir / "png"

        brats = brats_pairs()
        if brats:
            config = VolumeConfig(
                format="nifti",
                labels=BRATS_LABELS,
                strategy="all_foreground",
                percentile=(0.5, 99.5),
                percentile_of="nonzero",
            )
            run("BraTS 2015 sample (240x240x155 float32)", brats, config, args.counts, out_dir)
        else:
            print("\nBraTS sample not found; set MGR_SHARED_DATA to measure it")

        synthetic = write_synthetic_pairs(temporary_dir, args.synthetic)
        config = VolumeConfig(
            format="nifti",
            labels={1: "lesion", 2: "core"},
            strategy="all_foreground",
            percentile=(0.5, 99.5),
        )
        run("synthetic (240x240x155 float32)", synthetic, config, args.counts, out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
