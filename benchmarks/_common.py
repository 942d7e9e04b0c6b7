"""Shared by the benchmarks: machine description, timing, results files."""

from __future__ import annotations

import importlib
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
# --quick runs write here (git-ignored), so trying a benchmark never changes committed results.
QUICK_RESULTS = RESULTS / "quick"


def results_dir(quick: bool) -> Path:
    return QUICK_RESULTS if quick else RESULTS


def _json_value(value):
    return str(value) if isinstance(value, Path) else float(value)
LIBRARIES = ("numpy", "scikit-learn", "lightgbm", "implicit", "onnxruntime", "onnx", "onnxmltools", "polars", "torch")


def machine() -> dict:
    """CPU model, cores and library versions: printed with every result."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for name in LIBRARIES:
        try:
            from importlib.metadata import version
            versions[name] = version(name)
        except Exception:
            versions[name] = "absent"
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "os": platform.platform(terse=True), "libraries": versions,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def machine_lines(info: dict) -> str:
    libs = ", ".join(f"{k} {v}" for k, v in info["libraries"].items())
    return f"Machine: {info['cpu']}, {info['cores']} cores, Python {info['python']}, {info['os']}; {libs}; {info['date']}"


def has_torch() -> bool:
    try:
        importlib.import_module("torch")
        return True
    except ImportError:
        return False


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB.

    VmHWM, not getrusage: Linux carries ru_maxrss across exec, so a child started by a big
    parent would report the parent's peak.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_calls(fn, batch: int, min_calls: int = 30, budget_s: float = 2.0) -> dict:
    """p50/p99 latency of fn() (after warm-up) and pairs/s at the median."""
    for _ in range(5):
        fn()
    times = []
    start = time.perf_counter()
    while len(times) < min_calls or (time.perf_counter() - start < budget_s and len(times) < 20000):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    times = np.array(times)
    p50 = float(np.median(times))
    return {"batch": batch, "calls": len(times), "p50_us": p50 * 1e6, "p99_us": float(np.percentile(times, 99)) * 1e6,
            "pairs_per_s": batch / p50}


def save(name: str, payload: dict, markdown: str, folder: Path = RESULTS) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    json_path, md_path = folder / f"{name}.json", folder / f"{name}.md"
    json_path.write_text(json.dumps(payload, indent=1, default=_json_value))
    md_path.write_text(markdown)
    return json_path, md_path


def dir_size(path: Path) -> int:
    path = Path(path)
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def world_names(parser, text: str) -> list[str]:
    """The zoo families named in a comma-separated `text`; an unknown one is a usage error."""
    from pamela_lite import worlds

    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in worlds.FAMILIES]
    if unknown:
        parser.error(f"unknown world(s) {unknown}; known: {', '.join(worlds.FAMILIES)}")
    return names
