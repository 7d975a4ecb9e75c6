"""Measurement helpers of the OneID benchmark (bench/identity_bench.py): peak RSS, CPU contention, one timed
`resolve` call, and the scipy floor on the graph that call linked.

The module under test is passed in (its `resolve`, its `_star_edges`) rather than imported here: the runner may
measure features/integration/oneid.py of the work tree or of a git revision (--rev), and these helpers time whichever
it chose.
"""

from __future__ import annotations

import cProfile
import gc
import io
import os
import pstats
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def reset_peak_rss() -> bool:
    """Reset VmHWM (Linux >= 4.0) so the next reading is the peak of what follows; False when not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes(reset_ok: bool) -> int:
    if reset_ok:
        return _status_kib("VmHWM") * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # whole-process peak


def floor_graph(mentions: pd.DataFrame, res, star_edges: Callable) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """The edge list resolve links: star edges over the linkable identifiers of each mention; and the link count.

    Node codes are the row positions of res.nodes (resolve builds that table in code order); identifiers blocked,
    shared or of a non-linking type are left out, exactly as resolve leaves them out before its components call.
    `star_edges` is the measured module's own `_star_edges`, so the floor's graph is the one resolve built.
    """
    node_types = res.nodes["id_type"].to_numpy(dtype=object)
    node_values = res.nodes["value"].to_numpy(dtype=object)
    link_types = mentions["id_type"].to_numpy(dtype=object)
    link_values = mentions["value"].to_numpy(dtype=object)
    code = np.full(len(mentions), -1, dtype=np.int64)
    for t in pd.unique(node_types):
        here = np.flatnonzero(node_types == t)
        there = np.flatnonzero(link_types == t)
        hit = pd.Index(node_values[here]).get_indexer(link_values[there])
        code[there] = np.where(hit >= 0, here[hit], -1)
    assert (code >= 0).all(), "an input identifier is missing from resolve's node table"
    links = pd.DataFrame({"mention": mentions["mention_key"].to_numpy(), "node": code}).drop_duplicates()
    linkable_node = ~res.nodes["status"].isin(["blocked", "shared", "no_link"]).to_numpy()
    keep = linkable_node[links["node"].to_numpy()]
    src, dst = star_edges(links["mention"].to_numpy()[keep], links["node"].to_numpy()[keep])
    return src, dst, linkable_node, len(links)


def scipy_floor(src: np.ndarray, dst: np.ndarray, n: int, repeat: int = 3) -> tuple[float, float, np.ndarray]:
    """Best-of-`repeat` seconds for edge list -> CSR -> connected_components, the components call alone, labels."""
    total, cc_only, labels = [], [], np.zeros(0)
    for _ in range(repeat):
        gc.collect()
        t0 = time.perf_counter()
        graph = coo_matrix((np.ones(len(src), dtype=np.int8), (src, dst)), shape=(n, n)).tocsr()
        t1 = time.perf_counter()
        _n, labels = connected_components(graph, directed=False)
        t2 = time.perf_counter()
        total.append(t2 - t0)
        cc_only.append(t2 - t1)
    return min(total), min(cc_only), labels


def cpu_stall_us() -> int | None:
    """Total microseconds some runnable task waited for a CPU (Linux PSI); None when PSI is not available."""
    try:
        with open("/proc/pressure/cpu") as f:
            return int(f.readline().split("total=")[1])
    except (OSError, IndexError, ValueError):
        return None


@dataclass
class Timed:
    result: object
    wall_s: float
    cpu_s: float  # this process's user + system time: what the call cost, whatever else the machine ran
    contention: float | None  # share of the wall time during which some task on the machine waited for a CPU
    load1: float  # 1-minute load average when the call started
    rss_before: int
    peak_rss: int


def timed_resolve(resolve: Callable, mentions, cfg, blocked, profile_to: Path | None = None, **kw) -> Timed:
    """One call of `resolve` (the measured module's): wall and CPU seconds, CPU contention, peak RSS of the call."""
    gc.collect()
    rss_before = _status_kib("VmRSS") * 1024
    reset_ok = reset_peak_rss()
    prof = cProfile.Profile() if profile_to else None
    load1 = os.getloadavg()[0]
    stall0 = cpu_stall_us()
    c0, t0 = time.process_time(), time.perf_counter()
    if prof:
        prof.enable()
    res = resolve(mentions, cfg, blocked=blocked, **kw)
    if prof:
        prof.disable()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    stall1 = cpu_stall_us()
    peak = peak_rss_bytes(reset_ok)
    if prof:
        prof.dump_stats(str(profile_to))
    contention = (stall1 - stall0) / 1e6 / wall if stall0 is not None and stall1 is not None and wall else None
    return Timed(res, wall, cpu, contention, load1, rss_before, peak)


def profile_summary(path: Path, top: int = 25) -> str:
    buf = io.StringIO()
    stats = pstats.Stats(str(path), stream=buf)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return buf.getvalue()
