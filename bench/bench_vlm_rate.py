"""Measure how close the VLM synthesis stage comes to its requests-per-minute limit.

The stage runs end to end (PNG loading and resizing, prompt rendering, litellm over
HTTP, reply validation, SQLite cache writes) against the loopback fake server of
``tests/fake_openai_server.py`` with added latency per reply. The achieved rate is
measured from the arrival times at the server, so it is the rate a provider would see.

Run from the repository root:

    PYTHONPATH=engine python bench/bench_vlm_rate.py --rpm 600 --latency 0.25

Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests"))

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
# A placeholder key for the loopback server; no real key is needed or read.
BENCH_KEY_ENV = "MGR_BENCH_VLM_KEY"
os.environ[BENCH_KEY_ENV] = "bench-placeholder"

from fake_openai_server import FakeOpenAIServer, RecordedRequest  # noqa: E402
from medground.cache import ResponseCache  # noqa: E402
from medground.config.provider import (  # noqa: E402
    BackoffConfig,
    PriceConfig,
    ProviderConfig,
    VlmSynthConfig,
)
from medground.synth.vlm import VlmSynthesizer  # noqa: E402
from vlm_helpers import make_request, synthesis_responder  # noqa: E402


def machine_summary() -> str:
    """Describe the machine: CPU model, cores, memory, Python and litellm versions."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = "unknown"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                break
    except OSError:
        pass
    from importlib.metadata import version

    return (
        f"{cpu}, {os.cpu_count()} cores, {memory} memory, Python {platform.python_version()}, "
        f"litellm {version('litellm')}, {platform.system()} {platform.release()}"
    )


def main() -> None:
    """Run the benchmark and print the achieved rate next to the configured one."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--rpm", type=float, default=600.0, help="configured requests_per_minute (default 600)"
    )
    parser.add_argument(
        "--latency",
        type=float,
        default=0.25,
        help="seconds the server waits before each reply (default 0.25)",
    )
    parser.add_argument(
        "--concurrency", type=int, default=8, help="configured max_concurrency (default 8)"
    )
    parser.add_argument(
        "--requests", type=int, default=200, help="number of images, one request each (default 200)"
    )
    parser.add_argument(
        "--image-side",
        type=int,
        default=512,
        help="side of the square test images in pixels (default 512)",
    )
    args = parser.parse_args()

    def responder(request: RecordedRequest):  # noqa: ANN202
        return dataclasses.replace(synthesis_responder(request), delay_s=args.latency)

    with (
        tempfile.TemporaryDirectory(prefix="mgr-bench-") as folder,
        FakeOpenAIServer(responder) as server,
    ):
        tmp = Path(folder)
        requests = [
            make_request(
                tmp, f"case{index:05d}", width=args.image_side, height=args.image_side, seed=index
            )
            for index in range(args.requests)
        ]
        provider = ProviderConfig(
            model="openai/fake-vlm",
            api_base=server.base_url,
            api_key_env=BENCH_KEY_ENV,
            requests_per_minute=args.rpm,
            max_concurrency=args.concurrency,
            timeout_s=30,
            backoff=BackoffConfig(base_s=0.1, max_s=1.0),
            price=PriceConfig(input_per_1m_usd=0, output_per_1m_usd=0),
            max_image_side_px=512,
        )
        synthesizer = VlmSynthesizer(
            VlmSynthConfig(provider=provider),
            cache=ResponseCache(tmp / "run" / "run.sqlite"),
        )

        started = time.monotonic()
        candidates, rejections = synthesizer.synthesize(requests)
        wall_s = time.monotonic() - started

        arrivals = sorted(request.received_at for request in server.chat_requests())

    span_s = arrivals[-1] - arrivals[0]
    achieved_rpm = (len(arrivals) - 1) / span_s * 60 if span_s > 0 else float("inf")
    # Requests that rate-limited spacing alone allows with no other delay.
    ceiling_rpm = min(args.rpm, args.concurrency / args.latency * 60) if args.latency else args.rpm

    print(f"machine: {machine_summary()}")
    print(
        f"settings: requests_per_minute={args.rpm:g}, max_concurrency={args.concurrency}, "
        f"server latency={args.latency:g} s, {args.requests} images of "
        f"{args.image_side}x{args.image_side} px"
    )
    print(
        f"results: {len(candidates)} candidates, {len(rejections)} rejections, "
        f"{len(arrivals)} HTTP requests, wall time {wall_s:.1f} s"
    )
    print(
        f"achieved: {achieved_rpm:.1f} requests/min between first and last arrival = "
        f"{achieved_rpm / args.rpm * 100:.1f}% of the configured {args.rpm:g} "
        f"(latency and concurrency allow at most {ceiling_rpm:.0f})"
    )
    print(f"end to end: {len(arrivals) / wall_s * 60:.1f} requests/min including start-up")


if __name__ == "__main__":
    main()
