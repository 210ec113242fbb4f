"""Helpers for benchmarks: machine facts and a JSON record of every run."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import resource
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    import torch

    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d"),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "gpus": torch.cuda.device_count(),
        "mem_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
    }


def peak_rss_mib() -> float:
    """Peak resident memory of this process and its finished children, MiB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return round(max(own, kids) / 1024, 1)


def write(name: str, record: dict, out: Path | None = None) -> Path:
    out = out or RESULTS / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": name, "machine": machine(), **record}, indent=2))
    return out


def table(rows: list[tuple], header: tuple) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*header), fmt.format(*("-" * w for w in widths))] + [fmt.format(*r) for r in rows])


def process_kind(proc) -> str:
    """What a process of a local Ray is: the driver, a worker (by its task), or the daemon's name."""
    import os

    if proc.pid == os.getpid():
        return "driver"
    name, cmd = proc.name(), " ".join(proc.cmdline()[:4])
    if name.startswith("ray::") or cmd.startswith("ray::"):
        title = (name if name.startswith("ray::") else cmd).split()[0]
        return "worker " + title[5:].split("(")[0].split(".")[0]
    for daemon in ("raylet", "gcs_server", "dashboard", "runtime_env", "log_monitor", "monitor.py", "agent"):
        if daemon in cmd or daemon in name:
            return daemon
    return name


class TreeSampler:
    """Samples ``root`` (default: this process) and all its descendants every ``every`` seconds while in a
    ``with`` block: the peak total resident memory (``peak_mib``) and CPU seconds by kind of process
    (``cpu_seconds``: the driver, Ray workers by the task they ran, each Ray daemon). A process's CPU time
    is its last sample, so work within ``every`` of a process's exit is missed."""

    def __init__(self, root: int | None = None, every: float = 0.2):
        import os
        import threading

        self.root, self.every = root or os.getpid(), every
        self.peak_mib, self._last, self._kind, self._start = 0.0, {}, {}, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        import psutil

        try:
            root = psutil.Process(self.root)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return
        total = 0
        for p in procs:
            try:
                with p.oneshot():
                    total += p.memory_info().rss
                    t = p.cpu_times()
                    cpu = t.user + t.system
                    kind = process_kind(p)  # an idle worker is named by the task it runs later
                    if p.pid not in self._kind or not kind.endswith("IDLE"):
                        self._kind[p.pid] = kind
                    self._start.setdefault(p.pid, 0.0 if self._running else cpu)
                    self._last[p.pid] = cpu
            except psutil.Error:
                pass
        self.peak_mib = max(self.peak_mib, total / 2**20)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self._sample()

    def __enter__(self) -> "TreeSampler":
        self._running = False
        self._sample()  # processes already up count from now
        self._running = True
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    @property
    def cpu_seconds(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for pid, cpu in self._last.items():
            kind = self._kind[pid]
            out[kind] = out.get(kind, 0.0) + cpu - self._start[pid]
        return {k: round(v, 2) for k, v in sorted(out.items(), key=lambda kv: -kv[1])}


class timed_calls:
    """Within the ``with`` block, the seconds spent in each of ``names`` (functions of ``module``, looked up
    there at call time by the module's own code) accumulate in the dict the block receives."""

    def __init__(self, module, *names: str):
        self.module, self.names, self.seconds, self._saved = module, names, {}, {}

    def __enter__(self) -> dict[str, float]:
        import functools
        import time

        for name in self.names:
            fn = self._saved[name] = getattr(self.module, name)

            @functools.wraps(fn)
            def wrapper(*args, _fn=fn, _name=name, **kwargs):
                t0 = time.perf_counter()
                try:
                    return _fn(*args, **kwargs)
                finally:
                    self.seconds[_name] = self.seconds.get(_name, 0.0) + time.perf_counter() - t0

            setattr(self.module, name, wrapper)
        return self.seconds

    def __exit__(self, *exc) -> None:
        for name, fn in self._saved.items():
            setattr(self.module, name, fn)
