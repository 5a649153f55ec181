"""Run a sweep (sweep.py) in the NAT lab: one JSON line per trial in the output file, with the run's
metadata; trials the file already holds are skipped, so an interrupted sweep resumes where it
stopped. Progress is live in the terminal (rich) or one line a trial (without rich, or not a TTY)."""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import __version__
from .sweep import Trial, expand

TrialFn = Callable[[Any, Trial, dict[str, Any]], dict[str, Any]]


def _commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        r = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if r.returncode:
        return None
    return r.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def run_metadata(*, seed: int, profile: str | None = None, sweep: str | None = None) -> dict[str, Any]:
    """What a trial's numbers depend on besides its parameters."""
    return {"commit": _commit(), "nattrav": __version__, "kernel": platform.release(), "cpu": _cpu(),
            "cpus": os.cpu_count(), "python": platform.python_version(), "seed": seed, "lab_profile": profile,
            "sweep": sweep, "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            # the machine is shared: a timing is only comparable with others taken under a like load
            "loadavg": [round(x, 2) for x in os.getloadavg()]}


def done_keys(path: Path) -> set[str]:
    """Keys of the trials already recorded in `path` (lines that do not parse are ignored: a line cut
    by a crash is run again)."""
    keys: set[str] = set()
    if not path.exists():
        return keys
    with path.open() as f:
        for line in f:
            try:
                keys.add(json.loads(line)["key"])
            except (ValueError, KeyError, TypeError):
                continue
    return keys


def lab_trial(lab: Any, trial: Trial, spec: dict[str, Any]) -> dict[str, Any]:
    from .trial import punched_trial

    name = f"x{trial.key[:10]}"
    return punched_trial(lab, name, trial.options, spec.get("traffic"), timeout=float(spec.get("timeout", 20)),
                         transport=spec.get("transport", "udp"))


class _Progress:
    """rich's live bar when it is there and stderr is a terminal; else a line a trial."""

    def __init__(self, total: int, skipped: int, live: bool) -> None:
        self.total, self.n, self.ok = total, skipped, 0
        self.rich = None
        if live and sys.stderr.isatty():
            try:
                from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
            except ImportError:
                pass
            else:
                self.rich = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("ok {task.fields[ok]}"), TimeRemainingColumn(), transient=False)
                self.task = self.rich.add_task("sweep", total=total, completed=skipped, ok=0)
                self.rich.start()

    def trial(self, t: Trial, result: dict[str, Any]) -> None:
        self.n += 1
        self.ok += bool(result.get("ok"))
        if self.rich is not None:
            self.rich.update(self.task, advance=1, ok=self.ok, description=t.describe()[:60])
        else:
            secs = result.get("seconds")
            print(f"[{self.n}/{self.total}] {t.describe()}: {'ok' if result.get('ok') else 'FAIL'}"
                  + (f" {result.get('strategy')} {secs:.3f} s" if result.get("ok") and secs is not None else ""),
                  file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.rich is not None:
            self.rich.stop()


def run_sweep(spec: dict[str, Any], out: str | os.PathLike, *, trial_fn: TrialFn = lab_trial,
              open_case: Callable[[Any], Any] | None = None, live: bool = True) -> dict[str, int]:
    """Run every trial of `spec` not yet in `out`, appending one JSON line each; returns counts."""
    from .trial import open_case as default_open

    open_case = open_case or default_open
    cases = expand(spec)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    done = done_keys(path)
    total = sum(len(ts) for _, ts in cases)
    skipped = sum(1 for _, ts in cases for t in ts if t.key in done)
    progress = _Progress(total, skipped, live)
    ran = ok = 0
    if path.exists() and path.stat().st_size:
        with path.open("rb") as f:
            f.seek(-1, os.SEEK_END)
            cut = f.read(1) != b"\n"
        if cut:  # a line a crash cut short: the next record starts on a line of its own
            with path.open("a") as f:
                f.write("\n")
    try:
        with path.open("a") as f:
            for case, trials in cases:
                todo = [t for t in trials if t.key not in done]
                if not todo:
                    continue
                meta = run_metadata(seed=spec.get("seed", 0), profile=case.shape, sweep=spec.get("name"))
                with open_case(case) as lab:
                    for t in todo:
                        result = trial_fn(lab, t, spec)
                        row = {"key": t.key, "sweep": spec.get("name"), "case": {
                            "left": case.left, "right": case.right, "shape": case.shape,
                            "background": case.background}, "options": t.options, "repeat": t.repeat,
                            "transport": spec.get("transport", "udp"), "traffic_spec": spec.get("traffic"),
                            "result": result, "meta": meta}
                        f.write(json.dumps(row, default=str) + "\n")
                        f.flush()
                        ran += 1
                        ok += bool(result.get("ok"))
                        progress.trial(t, result)
    finally:
        progress.close()
    return {"total": total, "skipped": skipped, "ran": ran, "ok": ok}


def load_spec(path: str | os.PathLike) -> dict[str, Any]:
    """A sweep spec from a .toml or .json file."""
    import tomllib

    p = Path(path)
    raw = p.read_bytes()
    if p.suffix == ".json":
        return json.loads(raw)
    return tomllib.loads(raw.decode())
