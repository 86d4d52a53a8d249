"""Shared pieces of the benchmark suite: timing, machine info, the peer's availability, result rows, Markdown.

Timing method (every section uses it): a callable is run `warmup` times untimed, then `repeats` times timed
with `time.perf_counter`; a measurement reports the median and the minimum of the timed repetitions (and,
in the JSON, the process CPU time of each repetition, a load-insensitive cross-check). When two
or more callables are compared (lumbar_jax against the peer), their repetitions are interleaved (A B, B A,
A B, ...) so that a slow phase of a shared machine hits both alike. Rates are `items / seconds`: the
"median" rate comes from the median time, the "best" rate from the minimum time.

Every reported figure is a ratio against something measured in the same run on the same machine (the peer,
or the 1-worker / in-process configuration for scaling rows): absolute times from separate runs on a shared
machine are not comparable.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib
import importlib.metadata
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

SCHEMA_VERSION = 1
PEER_EXPECTED = {"monai": "1.6.1", "torch": "2.13.0"}
NOT_INSTALLED = "not installed"
VERSION_PACKAGES = ("numpy", "jax", "jaxlib", "flax", "grain", "pydicom", "tensorflow-datasets", "array-record",
                    "torch", "monai", "timm")


# ------------------------------------------------------------------------------------------------ context
@dataclasses.dataclass
class Context:
    """What the sections share within one run: mode, scratch dir, the peer, and cached inputs.

    `synthetic(n)` generates (once per run) a clean Kaggle-layout folder of n studies (`quirks=False`, seed
    `SEED`), `synthetic(n, matrix_scale=k)` the same studies with k times the in-plane matrix (5: 320-480 px
    slices, as in the real data); `built(config, n)` gives a TFDS data dir holding `rsna_lumbar_spine/{config}`
    built from it (a build the data section timed is reused via `remember_build`, otherwise one is built
    untimed).
    """

    smoke: bool
    workdir: str
    repo: str
    peer: dict[str, Any]
    _synthetic: dict[tuple[int, int], str] = dataclasses.field(default_factory=dict)
    _built: dict[tuple[str, int], str] = dataclasses.field(default_factory=dict)

    SEED = 0

    def synthetic_spec(self, num_studies: int, matrix_scale: int = 1):
        """The `DatasetSpec` of `synthetic(num_studies, matrix_scale)`: clean studies of seed SEED."""
        from lumbar_jax.data.synthetic import DatasetSpec

        return DatasetSpec(num_studies, seed=self.SEED, quirks=False, matrix_scale=matrix_scale)

    def synthetic(self, num_studies: int, matrix_scale: int = 1) -> str:
        key = (num_studies, matrix_scale)
        if key not in self._synthetic:
            from lumbar_jax.data.synthetic import write_synthetic_dataset

            name = f"synthetic_{num_studies}" + (f"_x{matrix_scale}" if matrix_scale != 1 else "")
            out = os.path.join(self.workdir, name)
            write_synthetic_dataset(out, self.synthetic_spec(num_studies, matrix_scale), workers=1, progress=False)
            self._synthetic[key] = out
        return self._synthetic[key]

    def remember_build(self, config: str, num_studies: int, data_dir: str) -> None:
        self._built.setdefault((config, num_studies), data_dir)

    def built(self, config: str, num_studies: int) -> str:
        key = (config, num_studies)
        if key not in self._built:
            from lumbar_jax.data.build import build_dataset

            data_dir = os.path.join(self.workdir, f"tfds_{config}_{num_studies}")
            build_dataset(self.synthetic(num_studies), data_dir, config, workers=1)
            self._built[key] = data_dir
        return self._built[key]


# ------------------------------------------------------------------------------------------------- timing
@dataclasses.dataclass
class Timing:
    """Timed repetitions of one callable (seconds each), plus what one repetition processes."""

    times_s: list[float]
    items: float  # items processed per repetition (studies, records, ...)
    warmup: int
    cpu_s: list[float] = dataclasses.field(default_factory=list)  # process CPU time (all threads) per repetition

    @property
    def median_s(self) -> float:
        return statistics.median(self.times_s)

    @property
    def min_s(self) -> float:
        return min(self.times_s)

    @property
    def rate_median(self) -> float:
        return self.items / self.median_s

    @property
    def rate_best(self) -> float:
        return self.items / self.min_s

    def to_json(self) -> dict[str, Any]:
        return {
            "status": "measured",
            "median": self.rate_median,
            "best": self.rate_best,
            "median_s": self.median_s,
            "min_s": self.min_s,
            "repeats": len(self.times_s),
            "warmup": self.warmup,
            "items_per_repeat": self.items,
            "times_s": self.times_s,
            # CPU seconds of this process (all its threads, not child processes) per repetition: barely moved
            # by other jobs on a shared machine, unlike wall time. Meaningful for in-process work only.
            "cpu_s": self.cpu_s,
            "cpu_median_s": statistics.median(self.cpu_s) if self.cpu_s else None,
        }


def measure(fn: Callable[[], Any], *, items: float, repeats: int, warmup: int = 1) -> Timing:
    """`fn` run `warmup` times untimed, then `repeats` times timed."""
    return measure_interleaved({"_": fn}, items={"_": items}, repeats=repeats, warmup=warmup)["_"]


def measure_interleaved(fns: Mapping[str, Callable[[], Any]], *, items: Mapping[str, float], repeats: int,
                        warmup: int = 1) -> dict[str, Timing]:
    """Time several callables with interleaved repetitions (order reversed every other round)."""
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            cpu_start, start = time.process_time(), time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - cpu_start)
    return {name: Timing(times[name], float(items[name]), warmup, cpu[name]) for name in names}


def matmul_rate(dtype: str, n: int, repeats: int) -> dict:
    """The default device's `dtype` matmul rate now: one n x n @ n x n product, median of `repeats` timings; the
    'peak' that achieved FLOP/s are read against."""
    import jax
    import jax.numpy as jnp

    a, b = (jax.random.normal(jax.random.key(i), (n, n), jnp.dtype(dtype)) for i in (0, 1))
    product = jax.jit(jnp.matmul)
    timing = measure(lambda: jax.block_until_ready(product(a, b)), items=2.0 * n**3, repeats=repeats, warmup=2)
    return {"n": n, "flop_per_s": timing.rate_median, "tflop_per_s": timing.rate_median / 1e12,
            "timing": timing.to_json()}


def conv_rate(dtype: str, batch: int, size: int, channels: int, repeats: int) -> dict:
    """The default device's `dtype` rate of a dense 3x3 2D convolution now (XLA's own, `lax.conv_general_dilated`,
    NHWC, `[batch, size, size, channels]` -> the same, 'SAME' padding), median of `repeats` timings: the
    convolution counterpart of `matmul_rate`."""
    import jax
    import jax.numpy as jnp

    x = jax.random.normal(jax.random.key(0), (batch, size, size, channels), jnp.dtype(dtype))
    kernel = jax.random.normal(jax.random.key(1), (3, 3, channels, channels), jnp.dtype(dtype))
    conv = jax.jit(lambda x, k: jax.lax.conv_general_dilated(x, k, (1, 1), "SAME",
                                                             dimension_numbers=("NHWC", "HWIO", "NHWC")))
    flops = 2.0 * batch * size * size * channels * channels * 9
    timing = measure(lambda: jax.block_until_ready(conv(x, kernel)), items=flops, repeats=repeats, warmup=2)
    return {"shape": [batch, size, size, channels], "flop_per_s": timing.rate_median, "timing": timing.to_json()}


def busy_work(n: int) -> int:
    """A fixed amount of single-core Python work (for `parallel_capacity`); module-level so it pickles."""
    total = 0
    for i in range(n):
        total = (total + i * i) % 1000003
    return total


def parallel_capacity(*, repeats: int, work: int, warmup: int = 1) -> dict[str, Timing]:
    """How much of a second core this (shared) machine gives right now: the same busy task run alone on one
    of 2 pool processes vs twice at once on both (the pool is started untimed). Rate = tasks/s; the ratio of
    the two is ~2 on an idle 2-core machine and ~1 when another job holds a core: read any scaling figure of
    the same run against it."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(2) as pool:
        pool.map(busy_work, [1, 1])  # both workers up
        return measure_interleaved({"one": lambda: pool.apply(busy_work, (work,)),
                                    "two": lambda: pool.map(busy_work, [work, work], chunksize=1)},
                                   items={"one": 1, "two": 2}, repeats=repeats, warmup=warmup)


# --------------------------------------------------------------------------------------------------- peer
def peer_status() -> dict[str, Any]:
    """Whether the peer (MONAI on PyTorch CPU) can be imported here, and its versions.

    {"available": bool, "reason": None or why not, "torch": version, "monai": version, "name": for tables}.
    Imports torch and monai (slow, ~5 s the first time); a missing package gives available=False with reason
    "not installed", and the peer columns of every table say so.
    """
    try:
        torch = importlib.import_module("torch")
        monai = importlib.import_module("monai")
    except ImportError as err:
        return {"available": False, "reason": NOT_INSTALLED, "detail": f"{type(err).__name__}: {err}",
                "torch": _version("torch"), "monai": _version("monai"), "name": "MONAI (not installed)"}
    versions = {"torch": torch.__version__, "monai": monai.__version__}
    mismatch = [f"{k} {v} (expected {PEER_EXPECTED[k]})" for k, v in versions.items()
                if not v.split("+")[0] == PEER_EXPECTED[k]]
    return {"available": True, "reason": None, **versions,
            "name": f"MONAI {versions['monai']} / PyTorch {versions['torch']}",
            "version_mismatch": mismatch or None}


def setup_torch() -> int:
    """Give the peer every core (`torch.set_num_threads(os.cpu_count())`); returns the thread count."""
    import torch

    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    return torch.get_num_threads()


# ------------------------------------------------------------------------------------------------ machine
def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return NOT_INSTALLED


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _memory_gib() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _git_commit(repo: str) -> str | None:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def reset_peak_rss() -> bool:
    """Reset this process's peak resident memory (Linux: VmHWM, `/proc/self/clear_refs`); False if it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def rss_mib(field: str) -> float | None:
    """`field` (VmRSS: resident now, VmHWM: peak since the last reset) of /proc/self/status in MiB, or None."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def max_rss_mib() -> float:
    """Peak resident memory since the process started (ru_maxrss: where the peak cannot be reset)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine_info(repo: str) -> dict[str, Any]:
    """CPU model, cores, memory, load, date, platform and package versions (for the JSON and the header)."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "memory_gib": _memory_gib(),
        "gpu": "not measured (CPU-only machine)",
        "loadavg_start": loadavg(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "git_commit": _git_commit(repo),
        "versions": {p: _version(p) for p in VERSION_PACKAGES},
    }


# ------------------------------------------------------------------------------------------------- rows
def row(row_id: str, name: str, unit: str, lumbar_jax: Timing | dict, peer: Timing | dict, *,
        ratio_of: str = "lumbar_jax / peer", peer_label: str | None = None, target: float | None = None,
        target_text: str | None = None, note: str = "") -> dict[str, Any]:
    """One result row. `peer` is a Timing, or a dict {"status": "..."} saying why there is no measurement.

    `ratio` = lumbar_jax median rate / peer median rate (> 1: lumbar_jax faster), `ratio_best` the same from
    the minimum times; both None without a peer measurement. `target`: the ratio the project aims for.
    Scaling rows compare lumbar_jax with itself: `peer` is then the baseline configuration, named by
    `peer_label` (e.g. "1 worker"), and `ratio_of` says what the ratio is (e.g. "2 workers / 1 worker").
    """
    ours = lumbar_jax.to_json() if isinstance(lumbar_jax, Timing) else dict(lumbar_jax)
    other = peer.to_json() if isinstance(peer, Timing) else dict(peer)
    ratio = ratio_best = None
    if ours.get("status") == "measured" and other.get("status") == "measured":
        ratio = ours["median"] / other["median"]
        ratio_best = ours["best"] / other["best"]
    return {
        "id": row_id,
        "name": name,
        "unit": unit,
        "lumbar_jax": ours,
        "peer": other,
        "ratio": ratio,
        "ratio_best": ratio_best,
        "ratio_of": ratio_of,
        "peer_label": peer_label,
        "target": target,
        "target_text": target_text or (f">= {target:g}x" if target is not None else None),
        "target_met": None if ratio is None or target is None else bool(ratio >= target),
        "note": note,
    }


def status(text: str, **extra) -> dict[str, Any]:
    """A peer/our cell without a measurement (e.g. 'not installed', 'pending: models section')."""
    return {"status": text, **extra}


# ---------------------------------------------------------------------------------------------- Markdown
def _fmt_rate(value: float) -> str:
    return f"{value:.3g}" if value < 100 else f"{value:.0f}"


def _cell(measurement: dict[str, Any], unit: str) -> str:
    if measurement.get("status") != "measured":
        return str(measurement.get("status"))
    return f"{_fmt_rate(measurement['median'])} {unit} (best {_fmt_rate(measurement['best'])})"


def _ratio_cell(r: dict[str, Any]) -> str:
    if r["ratio"] is None:
        return "-"
    text = f"**{r['ratio']:.2f}x** (best {r['ratio_best']:.2f}x)"
    return text


def _target_cell(r: dict[str, Any], smoke: bool) -> str:
    if not r["target_text"]:
        return "-"
    if r["target_met"] is None or smoke:  # smoke sizes say nothing about a target
        return r["target_text"]
    return f"{r['target_text']} {'met' if r['target_met'] else 'MISSED'}"


def markdown(results: dict[str, Any]) -> str:
    """The Markdown report: header (command, machine, versions, method) and one table per section."""
    m = results["machine"]
    v = m["versions"]
    peer = results["peer"]
    lines = [
        "# lumbar_jax benchmarks" + (" (smoke: tiny sizes, figures meaningless)" if results["smoke"] else ""),
        "",
        f"- command: `{results['command']}`",
        f"- date: {m['date']}; git {m['git_commit'] or 'unknown'}",
        f"- machine: {m['cpu_model']}, {m['cores']} cores ({m['usable_cores']} usable), "
        f"{m['memory_gib']} GiB; load average at start {m['loadavg_start']}, at end {m.get('loadavg_end')}",
        f"- GPU: {m['gpu']}",
        f"- versions: Python {m['python']}, numpy {v['numpy']}, jax {v['jax']}, flax {v['flax']}, "
        f"grain {v['grain']}, pydicom {v['pydicom']}, tfds {v['tensorflow-datasets']}; "
        f"peers: torch {v['torch']}, monai {v['monai']}, timm {v['timm']}"
        + (f" (torch threads {peer['torch_threads']})" if peer.get("torch_threads") else "")
        + ("" if peer["available"] else f" -- MONAI {peer['reason']}: the data and models sections' peer "
                                        "columns empty"),
        "- method: median of N timed repetitions after warm-up (`time.perf_counter`), best = minimum; "
        "lumbar_jax and peer repetitions interleaved; ratio = lumbar_jax rate / peer rate from the medians "
        "(> 1: lumbar_jax faster)",
        "",
    ]
    for name, section in results["sections"].items():
        lines.append(f"## {name}")
        lines.append("")
        if section.get("error"):
            lines += [f"**failed**: `{section['error']}`", ""]
        if section.get("summary"):
            lines += [section["summary"], ""]
        if section.get("rows"):
            lines.append(f"| benchmark | lumbar_jax | peer ({section.get('peer_name', peer['name'])}) "
                         "| ratio | target |")
            lines.append("|---|---|---|---|---|")
            for r in section["rows"]:
                ratio_label = "" if r["ratio_of"] == "lumbar_jax / peer" else f" ({r['ratio_of']})"
                peer_cell = _cell(r["peer"], r["unit"])
                if r.get("peer_label"):
                    peer_cell = f"{r['peer_label']}: {peer_cell}"
                lines.append(f"| {r['name']} | {_cell(r['lumbar_jax'], r['unit'])} | {peer_cell} "
                             f"| {_ratio_cell(r)}{ratio_label if r['ratio'] is not None else ''} "
                             f"| {_target_cell(r, results['smoke'])} |")
            lines.append("")
            notes = [f"- {r['name']}: {r['note']}" for r in section["rows"] if r.get("note")]
            if notes:
                lines += ["Notes:", *notes, ""]
        for key, value in section.get("extra_md", {}).items():
            lines.append(f"- {key}: {value}")
        if section.get("extra_md"):
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"
