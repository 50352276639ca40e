"""Benchmark the offline pipeline against decoding alone, per stage, per executor, and memory.

Usage (from the repository root)::

    PYTHONPATH=engine python bench/bench_pipeline.py --work /tmp/mgr-bench \
        --synthetic 10000 --memory-counts 1000 10000 --json /tmp/mgr-bench/results.json

Each pipeline run is ``mgr run ... --no-preview --no-progress`` in a subprocess, timed
from start to exit (so interpreter and worker start-up are included), while a sampler
reads the resident set size (RSS) of the whole process tree every 50 ms with psutil.
Decoding alone reads every image and mask file of the same items with Pillow into NumPy
arrays in one process, which is the floor that no pipeline can beat with one worker.

The shared samples hold 5 to 32 images, so start-up dominates their whole runs.
``--steady N`` therefore also cycles each sample to N images (the copies read the same
files under their own case ids) and times the real pipeline in this process, with one
worker and with the default worker count, against decoding the same N items.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "engine"))

# The in-process runs below must use the thread settings that `mgr` sets for itself.
from medground.threads import use_one_native_thread  # noqa: E402

use_one_native_thread()

import numpy as np  # noqa: E402
import psutil  # noqa: E402
from PIL import Image  # noqa: E402

from medground import runner  # noqa: E402
from medground.config.loader import load_manifest  # noqa: E402
from medground.demo import write_demo  # noqa: E402
from medground.executors import default_workers  # noqa: E402
from medground.io.pairing import Discovery, ImageItem, discover  # noqa: E402
from medground.runner import RunOptions  # noqa: E402

logger = logging.getLogger(__name__)

SHARED_2D = (
    "isbi2012-em-membrane",
    "kvasir-seg",
    "hc18-fetal-head",
    "busi-breast-ultrasound",
    "ph2-dermoscopy",
)


def machine() -> dict[str, Any]:
    """Describe the machine: cores, memory and CPU model."""
    model = platform.processor() or "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "cpu": model,
        "python": platform.python_version(),
    }


def decode_only(
    manifest_path: Path, root: Path | None, repeat_to: int | None = None
) -> dict[str, Any]:
    """Decode every paired image and mask file once; return images, files and seconds.

    With ``repeat_to``, the items are those of :func:`repeated` (the sample cycled to
    that many images), and the best of two passes is kept.
    """
    loaded = load_manifest(manifest_path, root)
    items = discover(loaded.manifest, loaded.root).items
    if repeat_to:
        items = repeated(items, repeat_to)
    best = float("inf")
    for _ in range(2 if repeat_to else 1):
        files = 0
        started = time.perf_counter()
        for item in items:
            for relative in [item.image, *item.all_masks]:
                with Image.open(loaded.root / relative) as image:
                    np.asarray(image)
                files += 1
        best = min(best, time.perf_counter() - started)
    return {"images": len(items), "files": files, "seconds": best}


def plain_regionprops(manifest_path: Path, root: Path, count: int) -> dict[str, Any]:
    """Time a reference loop: decode, then skimage ``label`` and ``regionprops`` per mask.

    Every mask file of the cycled items is decoded, its non-zero pixels (any channel)
    labelled with 8-connectivity, and box, area, centroid, eccentricity, solidity,
    orientation and perimeter read for every component, one region at a time. This is
    the straightforward way to get the measurements, for comparison, not the pipeline.
    """
    from skimage.measure import label, regionprops

    loaded = load_manifest(manifest_path, root)
    items = repeated(discover(loaded.manifest, loaded.root).items, count)
    started = time.perf_counter()
    regions = 0
    for item in items:
        with Image.open(loaded.root / item.image) as image:
            np.asarray(image)
        for relative in item.all_masks:
            with Image.open(loaded.root / relative) as image:
                mask = np.asarray(image)
            foreground = mask.any(axis=2) if mask.ndim == 3 else mask > 0
            for region in regionprops(label(foreground, connectivity=2)):
                _ = (region.bbox, region.area, region.centroid, region.eccentricity,
                     region.solidity, region.orientation, region.perimeter)
                regions += 1
    return {"images": count, "regions": regions, "seconds": time.perf_counter() - started}


def repeated(items: list[ImageItem], count: int) -> list[ImageItem]:
    """Cycle ``items`` to ``count`` images, each copy under its own case id.

    The copies read the same files, so a small sample is timed like a dataset of
    ``count`` images; distinct case ids keep their records apart.
    """
    return [
        dataclasses.replace(
            items[k % len(items)],
            index=k,
            case_id=f"{items[k % len(items)].case_id}-copy{k // len(items)}",
        )
        for k in range(count)
    ]


def steady_run(
    manifest_path: Path, root: Path, out: Path, images: int, workers: int | None
) -> dict[str, Any]:
    """Run the whole pipeline in this process on the sample cycled to ``images`` images.

    ``medground.runner.discover`` is wrapped for the run so that it returns the cycled
    items; everything else is the real ``mgr run`` (store, outputs, report), without
    previews. Interpreter start-up and imports are not included; worker start-up is.
    """
    original = runner.discover

    def cycled(manifest: Any, dataset_root: Path) -> Discovery:
        found = original(manifest, dataset_root)
        return dataclasses.replace(found, items=repeated(found.items, images))

    options = RunOptions(
        out_dir=out, root=root, workers=workers, previews=False, progress=False
    )
    runner.discover = cycled
    try:
        started = time.perf_counter()
        summary = runner.run(manifest_path, options)
        seconds = time.perf_counter() - started
    finally:
        runner.discover = original
    stats = json.loads((summary.out / "stats.json").read_text())
    stages: dict[str, float] = {}
    for batch in stats:
        for stage, value in batch["timings"].items():
            stages[stage] = stages.get(stage, 0.0) + value
    return {"images": images, "seconds": seconds, "stages": stages}


class TreeMemorySampler:
    """Peak RSS of a process and all its descendants, sampled in a background thread."""

    def __init__(self, pid: int, interval: float = 0.05):
        self.pid = pid
        self.interval = interval
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> TreeMemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        try:
            root = psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            return
        while not self._stop.is_set():
            total = 0
            try:
                processes = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            for process in processes:
                try:
                    total += process.memory_info().rss
                except psutil.NoSuchProcess:
                    continue
            self.peak_bytes = max(self.peak_bytes, total)
            time.sleep(self.interval)


def pipeline_run(
    manifest_path: Path, root: Path | None, out: Path, extra: list[str]
) -> dict[str, Any]:
    """Run ``mgr run`` in a subprocess; return wall seconds, peak tree RSS and stage times."""
    command = [
        sys.executable,
        "-m",
        "medground.cli",
        "-q",
        "run",
        str(manifest_path),
        "--out",
        str(out),
        "--no-preview",
        "--no-progress",
        *(["--root", str(root)] if root else []),
        *extra,
    ]
    environment = {**os.environ, "PYTHONPATH": str(REPO / "engine")}
    started = time.perf_counter()
    process = subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, text=True)
    with TreeMemorySampler(process.pid) as sampler:
        stdout, _ = process.communicate()
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed with exit code {process.returncode}")
    run_dir = next(p for p in out.iterdir() if p.is_dir())
    stats = json.loads((run_dir / "stats.json").read_text())
    stages: dict[str, float] = {}
    for batch in stats:
        for stage, value in batch["timings"].items():
            stages[stage] = stages.get(stage, 0.0) + value
    return {
        "command": " ".join(["mgr", *command[4:]]),
        "images": sum(b["images"] for b in stats),
        "seconds": seconds,
        "peak_rss_mib": sampler.peak_bytes / 2**20,
        "stages": stages,
        "summary": stdout.strip(),
    }


def render_markdown(results: dict[str, Any]) -> str:
    """Render stored results as the Markdown tables of ``docs/benchmarks.md``."""
    lines = [
        "| dataset | images | decode-only img/s | config | wall s | img/s | "
        "share of decode-only | per-image work img/s | work share | peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    stage_lines = [
        "| dataset | config | load | objects | targets | cues | synthesis | format | rules | "
        "wait_for_workers |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, entry in results["datasets"].items():
        decode = entry["decode"]
        decode_rate = decode["images"] / decode["seconds"]
        for label, run in entry["runs"].items():
            rate = run["images"] / run["seconds"]
            # Per-image work: the stage timings summed, without interpreter start-up,
            # pipeline loading and output writing. Only meaningful in one process (w1):
            # with workers, stage times overlap and are summed across processes.
            work = sum(v for k, v in run["stages"].items() if k != "wait_for_workers")
            if label == "w1" and work > 0:
                work_rate = run["images"] / work
                work_cells = f"{work_rate:,.1f} | {100 * work_rate / decode_rate:.1f} %"
            else:
                work_cells = "– | –"
            lines.append(
                f"| {name} | {run['images']} | {decode_rate:,.0f} | {label} | "
                f"{run['seconds']:.1f} | {rate:,.1f} | {100 * rate / decode_rate:.1f} % | "
                f"{work_cells} | {run['peak_rss_mib']:.0f} |"
            )
            per_image = {k: 1000 * v / run["images"] for k, v in run["stages"].items()}
            cells = [
                f"{per_image.get(stage, 0.0):.2f}"
                for stage in (
                    "load",
                    "objects",
                    "targets",
                    "cues",
                    "synthesis",
                    "format",
                    "rules",
                    "wait_for_workers",
                )
            ]
            stage_lines.append(f"| {name} | {label} | " + " | ".join(cells) + " |")
    text = [*lines, "", "Stage times in ms per image:", "", *stage_lines]
    if results.get("steady"):
        text += ["", *render_steady(results["steady"])]
    return "\n".join(text)


_STAGES = ("load", "objects", "targets", "cues", "synthesis", "format", "rules")


def render_steady(steady: dict[str, Any]) -> list[str]:
    """Render the steady-state runs: each shared sample cycled to the same image count."""
    lines = [
        "| dataset | images | decode-only img/s | config | run s | img/s | "
        "share of decode-only |",
        "|---|---|---|---|---|---|---|",
    ]
    reference = [
        "| dataset | decode-only img/s | label + regionprops img/s | share of decode-only |",
        "|---|---|---|---|",
    ]
    stage_lines = [
        "| dataset | " + " | ".join(_STAGES) + " | run total |",
        "|---|" + "---|" * (len(_STAGES) + 1),
    ]
    totals: dict[str, list[float]] = {}
    plain_totals = [0.0, 0.0]
    for name, entry in steady.items():
        decode = entry["decode"]
        decode_rate = decode["images"] / decode["seconds"]
        if "regionprops" in entry:
            plain = entry["regionprops"]["images"] / entry["regionprops"]["seconds"]
            reference.append(
                f"| {name} | {decode_rate:,.0f} | {plain:,.1f} | "
                f"{100 * plain / decode_rate:.0f} % |"
            )
            plain_totals[0] += decode["seconds"]
            plain_totals[1] += entry["regionprops"]["seconds"]
        for label, run in entry["runs"].items():
            rate = run["images"] / run["seconds"]
            lines.append(
                f"| {name} | {run['images']} | {decode_rate:,.0f} | {label} | "
                f"{run['seconds']:.2f} | {rate:,.1f} | {100 * rate / decode_rate:.0f} % |"
            )
            summed = totals.setdefault(label, [0.0, 0.0])
            summed[0] += decode["seconds"]
            summed[1] += run["seconds"]
            if label == "w1":
                per_image = {k: 1000 * v / run["images"] for k, v in run["stages"].items()}
                cells = [f"{per_image.get(stage, 0.0):.2f}" for stage in _STAGES]
                total = 1000 * run["seconds"] / run["images"]
                stage_lines.append(f"| {name} | " + " | ".join(cells) + f" | {total:.2f} |")
    for label, (decode_seconds, run_seconds) in totals.items():
        lines.append(
            f"| all five | – | – | {label} | {run_seconds:.2f} | – | "
            f"{100 * decode_seconds / run_seconds:.0f} % |"
        )
    if plain_totals[1]:
        reference.append(
            f"| all five | – | – | {100 * plain_totals[0] / plain_totals[1]:.0f} % |"
        )
    return [
        *lines,
        "",
        "The reference loop (decode, then skimage `label` and `regionprops` per mask):",
        "",
        *reference,
        "",
        "Stage times of the w1 runs in ms per image (run total: wall time of the run "
        "divided by its images):",
        "",
        *stage_lines,
    ]


def main() -> None:
    """Run the benchmarks and print (and optionally store) the results as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, help="scratch folder (required unless --render)")
    parser.add_argument(
        "--shared",
        type=Path,
        default=Path(os.environ.get("MGR_SHARED_DATA", REPO.parent / "shared" / "data")),
    )
    parser.add_argument("--synthetic", type=int, default=10_000, help="synthetic images")
    parser.add_argument("--size", type=int, default=256, help="synthetic image side in px")
    parser.add_argument("--memory-counts", type=int, nargs="*", default=[1000, 10_000])
    parser.add_argument("--workers", type=int, nargs="*", default=[1, 2])
    parser.add_argument("--dask", action="store_true", help="also run the Dask executor")
    parser.add_argument(
        "--steady",
        type=int,
        default=512,
        help="also run each shared sample cycled to this many images in-process (0: skip)",
    )
    parser.add_argument("--json", type=Path, help="write the results here too")
    parser.add_argument(
        "--render", type=Path, help="print stored results (from --json) as Markdown and exit"
    )
    args = parser.parse_args()
    if args.render:
        print(render_markdown(json.loads(args.render.read_text())))
        return
    if args.work is None:
        parser.error("--work is required to run the benchmarks")

    results: dict[str, Any] = {"machine": machine(), "argv": sys.argv, "datasets": {}}

    for name in SHARED_2D:
        root = args.shared / name
        if not root.is_dir():
            continue
        manifest = REPO / "datasets" / f"{name}.yaml"
        entry = {"decode": decode_only(manifest, root), "runs": {}}
        for workers in args.workers:
            out = args.work / "out" / f"{name}-w{workers}"
            entry["runs"][f"w{workers}"] = pipeline_run(
                manifest, root, out, ["--workers", str(workers)]
            )
        results["datasets"][name] = entry
        print(json.dumps({name: entry}, indent=1), flush=True)

    if args.steady:
        results["steady"] = {}
        for name in SHARED_2D:
            root = args.shared / name
            if not root.is_dir():
                continue
            manifest = REPO / "datasets" / f"{name}.yaml"
            entry = {
                "decode": decode_only(manifest, root, args.steady),
                "regionprops": plain_regionprops(manifest, root, args.steady),
                "runs": {},
            }
            for label, workers in (("w1", 1), (f"w{default_workers()}", None)):
                out = args.work / "out" / f"steady-{name}-{label}"
                entry["runs"][label] = steady_run(manifest, root, out, args.steady, workers)
            results["steady"][name] = entry
            print(json.dumps({f"steady {name}": entry}, indent=1), flush=True)

    counts = sorted(c for c in {args.synthetic, *args.memory_counts} if c > 0)
    for count in counts:
        data = args.work / f"synthetic-{count}"
        manifest = data / "demo.yaml"
        if not manifest.is_file():
            write_demo(data, count=count, seed=0, size=args.size)
        entry = {"decode": decode_only(manifest, None), "runs": {}}
        configurations: list[tuple[str, list[str]]] = [
            (f"w{w}", ["--workers", str(w)]) for w in args.workers
        ]
        if args.dask and count == args.synthetic:
            configurations.append(("dask2", ["--executor", "dask", "--workers", "2"]))
        for label, extra in configurations:
            out = args.work / "out" / f"synthetic-{count}-{label}"
            entry["runs"][label] = pipeline_run(manifest, None, out, extra)
        results["datasets"][f"synthetic-{count}"] = entry
        print(json.dumps({f"synthetic-{count}": entry}, indent=1), flush=True)

    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
