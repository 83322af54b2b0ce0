"""Peak memory of `extract` for `anonfeat bench`: a fresh process and its decoding workers, sampled
from /proc (VmHWM, smaps_rollup) while it runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from anonfeat.errors import AnonfeatError

_MEMORY_SCRIPT = r"""
import json, sys
from pathlib import Path
from anonfeat.extract import ExtractOptions, extract
from anonfeat.video.discover import VideoItem
args = json.loads(sys.argv[1])
video = Path(args["video"])
result = extract([VideoItem(video.name, video)], args["out"], ExtractOptions(**args["options"]))
# VmHWM, not ru_maxrss: after fork + exec, ru_maxrss also counts the peak of the pre-exec copy of
# the process that started us (the whole benchmark), while VmHWM belongs to this program's own memory.
status = {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in open("/proc/self/status"))
          if k in ("VmHWM", "RssAnon", "RssFile")}
print("ANONFEAT_BENCH " + json.dumps({
    "rss_anon_end_kb": status.get("RssAnon", 0), "rss_file_end_kb": status.get("RssFile", 0),
    "self_kb": status["VmHWM"], "clips": result.clips, "seconds": result.seconds, "failed": result.failed,
    "heap_trims": result.heap_trims, "heap_trim_seconds": result.heap_trim_seconds}))
"""


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    kids = [int(k) for k in f.read().split()]
                out.extend(kids)
                todo.extend(kids)
        except OSError:
            pass
    return out


def _vm_hwm_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _rollup_kb(pid: int) -> dict[str, int]:
    """Pss and Private (clean + dirty: pages no other process maps) of a process, in kB."""
    out = {"Pss": 0, "Private": 0}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key == "Pss":
                    out["Pss"] = int(rest.split()[0])
                elif key in ("Private_Clean", "Private_Dirty"):
                    out["Private"] += int(rest.split()[0])
    except (OSError, ValueError, IndexError):
        pass
    return out


def _exe(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return " ".join(f.read().replace(b"\0", b" ").decode(errors="replace").split())[:80]
    except OSError:
        return ""


class TreePoller:
    """Per-process peaks of a process tree, for `extract_peak_rss`.

    Only the root's long-lived descendants (the decoding workers) are counted. Helpers that the
    libraries start with fork/vfork + exec at import time (`ldconfig -p` from ctypes, `uname -p`
    from `platform`) are not: before their exec they share (vfork) or copy-on-write (fork) the
    root's memory, and /proc then shows the root's own VmHWM under their pid; counting them
    added the main process a second time (the 448 MB "second child" of an earlier bench run). A sample is
    kept only while the pid runs the same executable as when it was first seen, the pid must be
    seen in two polls to count, and a sample whose VmHWM equals the root's (same memory) is dropped.
    """

    def __init__(self, root: int, private_interval: float):
        self.root = root
        self.private_interval = private_interval
        self.vm_hwm: dict[int, int] = {}  # counted pid -> peak VmHWM (kB)
        self.private: dict[int, int] = {}  # counted pid -> peak Private (kB)
        self.pss_peak = 0
        self._seen: dict[int, dict] = {}
        self._next_rollup = 0.0

    def poll(self) -> None:
        kids = _descendants(self.root)
        root_hwm = _vm_hwm_kb(self.root)
        for pid in kids:
            exe, hwm = _exe(pid), _vm_hwm_kb(pid)
            if exe is None or hwm is None:
                continue
            info = self._seen.get(pid)
            if info is None or info["exe"] != exe:  # new, or exec'd since: what came before was not its own
                info = self._seen[pid] = {"exe": exe, "polls": 0, "hwm": 0, "shown": 0, "cmdline": _cmdline(pid)}
                self.vm_hwm.pop(pid, None)
                self.private.pop(pid, None)
            info["shown"] = max(info["shown"], hwm)
            if root_hwm is not None and hwm == root_hwm:
                continue  # a vfork child before its exec: the root's own memory
            info["polls"] += 1
            info["hwm"] = max(info["hwm"], hwm)
            if info["polls"] >= 2:
                self.vm_hwm[pid] = info["hwm"]
                if pid not in self.private:  # a worker just counted: its private memory now, not in 0.25 s
                    self.private[pid] = _rollup_kb(pid)["Private"]
        if time.monotonic() >= self._next_rollup:
            total = _rollup_kb(self.root)["Pss"]
            for pid in kids:
                if pid in self.vm_hwm:
                    rollup = _rollup_kb(pid)
                    total += rollup["Pss"]
                    self.private[pid] = max(self.private.get(pid, 0), rollup["Private"])
            self.pss_peak = max(self.pss_peak, total)
            self._next_rollup = time.monotonic() + self.private_interval

    def helpers(self) -> list[dict]:
        """The descendants seen but not counted: command line and the VmHWM /proc showed (MB)."""
        return [{"cmdline": info["cmdline"], "vm_hwm_mb": info["shown"] / 1024}
                for pid, info in sorted(self._seen.items()) if pid not in self.vm_hwm]


def extract_peak_rss(video: Path, out: Path, options: dict, timeout: float | None = None,
                     pss_interval: float = 0.25) -> dict:
    """Run extract on one video in a fresh process; its peak memory and its decoding workers' (MB).

    `rss_mb` (the headline) is the physical memory the run needs: the main process's peak resident
    set (VmHWM: every page it maps, libraries included) plus each decoding worker's peak of private
    memory (pages no other process maps, sampled every `pss_interval` s). A worker is forked from
    the main process after torch and the model are loaded, so most of its resident set (480-520
    of about 580 MB here) is the main process's pages, shared copy-on-write; counting them again overstated
    the need by about that much.
    `rss_sum_mb` is the former figure, the sum of each process's VmHWM (an upper bound that counts
    the pages shared after fork in every process). `pss_mb` is the largest sum of proportional set
    sizes seen: below the need whenever other processes (the benchmark itself) map the same
    libraries, since their pages are then split with processes outside the run.
    """
    out = Path(out)
    if out.exists():
        out.unlink()  # a store that already holds the video would make extract skip it
    cmd = [sys.executable, "-c", _MEMORY_SCRIPT, json.dumps({"video": str(video), "out": str(out), "options": options})]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    poller = TreePoller(proc.pid, pss_interval)
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            poller.poll()
            stop.wait(0.02)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    finally:
        stop.set()
        thread.join()
    line = next((ln for ln in stdout.splitlines() if ln.startswith("ANONFEAT_BENCH ")), None)
    if proc.returncode != 0 or line is None:
        tail = (stderr.strip().splitlines() or ["no output"])[-1]
        raise AnonfeatError(f"memory run on {video.name} failed (exit {proc.returncode}): {tail}")
    report = json.loads(line.split(" ", 1)[1])
    if report["failed"]:
        raise AnonfeatError(f"memory run on {video.name} failed: {report['failed']}")
    pids = sorted(poller.vm_hwm, key=lambda pid: -poller.vm_hwm[pid])
    workers = [poller.vm_hwm[pid] for pid in pids]
    private = [poller.private.get(pid, 0) for pid in pids]
    main_kb = report["self_kb"]
    return {"rss_mb": (main_kb + sum(private)) / 1024, "rss_sum_mb": (main_kb + sum(workers)) / 1024,
            "pss_mb": poller.pss_peak / 1024, "main_mb": main_kb / 1024,
            "workers_mb": [w / 1024 for w in workers], "workers_private_mb": [p / 1024 for p in private],
            "helpers": poller.helpers(), "clips": report["clips"], "seconds": report["seconds"],
            "heap_trims": report["heap_trims"], "heap_trim_seconds": report["heap_trim_seconds"],
            "main_end_anon_mb": report["rss_anon_end_kb"] / 1024, "main_end_file_mb": report["rss_file_end_kb"] / 1024}
