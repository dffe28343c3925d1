"""Reader benchmark: ``make_reader`` against a raw pyarrow scan, memory on 4x data, first batch on 10,000 files.

Every measurement runs in its own fresh Python process (imports done before the clock starts), one after the
other, in one run of this script, on caches made by ``bench/gen_data.py`` (generated on the first run):

* ``raw``      — ``pq.ParquetFile(f).iter_batches(100)`` over the files in manifest order, each batch
  converted per column to numpy in the reader's forms (``loader.convert.to_numpy``: values + offsets for
  lists and bytes). No shuffle: the ceiling of a plain scan.
* ``thread``   — ``make_reader(batch_size=100, shuffle=True, pool="thread")``.
* ``serial``   — (optional) the same with ``pool="serial"``: the reader's own CPU cost without threads.
* ``process``  — the same with ``pool="process"``.
* ``decoded``  — ``thread`` with ``decoded_cache_dir=`` warm (filled by one untimed epoch first): what every
  epoch after the first, and every later run on the machine, reads (mapped Arrow IPC, no Parquet decode).
* ``decoded-cold`` — ``thread`` with an emptied ``decoded_cache_dir``: the first epoch's cost of filling it.
* ``torch``    — (optional, ``--only ...,torch``) ``loader.torch.make_dataloader`` with 2 DataLoader workers.
* ``tf``       — (optional, ``--only ...,tf``) ``loader.tf.make_dataset`` iterated eagerly.
* ``raw py`` / ``thread py`` / ``process py`` — (optional, ``--only ...,py``) the raw scan and both pools with
  a pure-Python transform applied to every batch (``bench/pytransform.py``: decode, lower-case, split and
  hash each title's words; it holds the GIL throughout): what ``pool="process"`` is for. Their ratios are to
  ``raw py``, the same scan with the transform applied in its loop.
* ``raw warm`` / ``thread warm`` — (optional, ``--only ...,warm``) the same runs timed over batches
  ``N+1 .. 2N`` of one pass (the first N consumed untimed first): throughput once the process's memory is
  in use, apart from the first touch of fresh pages (see ``faults/krow``).
* ``raw block`` / ``block`` — (optional, ``--only ...,block``) the raw scan and ``thread`` on the 4x rows
  written in row groups of 120 MiB (generated on first use: 3.2 GB), the layout the Spark job writes (row
  groups just under a 128 MiB HDFS block): each row group is far above a window's share of the memory
  budget, so the reader streams it in slices, 10 row groups side by side.
* ``small`` / ``small whole`` — (optional, ``--only ...,small``) ``thread`` with ``memory_budget=128 MiB``
  (what each of 2 DataLoader workers gets): a window's share holds 5 whole row groups, so the reader
  interleaves slices of 10 to keep every batch mixing 8 or more; ``small whole`` is the same with whole row
  groups (``loader.sizes.MIN_MIX = 1``), what the reader did before.
* ``thread 4x``— ``thread`` on the 4x dataset: peak RSS must not grow with the data.
* ``first batch 10k`` — time from before ``make_reader`` (open included) to the first batch on a cache of
  10,000 one-row-group files.

Printed per run: samples/s (rows over the time from before open to the last batch), ratio to the raw scan,
time to first batch, peak RSS (``VmHWM`` of the measuring process, plus the sampled peak of the sum over
its process tree, which counts process-pool workers), row groups mixed per batch (distinct source row
groups among a batch's rows, from ``product_id``, which ``gen_data`` writes in row order: mean and minimum
over the run's batches; the ``warm`` run's batches reach the epoch's end), and CPU time per
row (the measuring process plus its sampled descendants, closing included), minor page faults per 1,000
rows (first touches of fresh memory: each costs the kernel a zeroed page; on the dev VM about 3 us, so a
reader whose working set is 200 MB larger pays ~0.15 s for it in the first 1000 batches), and the time the
reader takes to close after the last batch (stopping its workers; not in samples/s): on a shared machine
the wall-clock figures swing with other load, CPU per row much less, and ``2 × raw CPU / reader CPU``
bounds the ratio two cores allow.

Targets on the 2-core dev machine: ratio >= 1.5 with >= 8 row groups per batch; first batch <= 0.3 s on
10,000 files; peak RSS <= 500 MB and <= 1.1x when the data grows 4x. Figures, not a pass/fail test.

Example::

    python bench/bench_reader.py --data /tmp/larder-bench            # generates the caches if missing
    python bench/bench_reader.py --data /tmp/larder-bench --profile thread   # cProfile one child
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from procstat import cpu_ticks, status_kb, tree  # noqa: E402 - bench/, the script's own directory

CACHES = {  # name -> gen_data arguments
    "base": [],
    "base4x": ["--scale", "4"],
    "tiny": ["--rows", "10000", "--files", "10000", "--image-bytes", "64:256"],
    "block": ["--scale", "4", "--row-group-mb", "120"],  # the Spark job's layout: row groups under a 128 MiB block
}


# ------------------------------------------------------------------------------------------------ memory


class TreeRss:
    """Samples this process and its descendants every 20 ms: the peak of their summed ``VmRSS``, and the
    CPU time of the descendants (process-pool workers are children of a fork server, not ours, so
    ``RUSAGE_CHILDREN`` would miss them; a worker's last < 20 ms before it exits are missed here)."""

    def __init__(self):
        self.peak_kb = 0
        self._ticks: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        me = str(os.getpid())
        pids = tree(me)
        self.peak_kb = max(self.peak_kb, sum(status_kb(p, "VmRSS") for p in pids))
        for p in pids:
            if p != me:
                self._ticks[p] = max(self._ticks.get(p, 0), cpu_ticks(p))

    def _run(self):
        while not self._stop.wait(0.02):
            self._sample()

    @property
    def descendants_cpu_s(self) -> float:
        """CPU seconds used by descendants while sampled."""
        return sum(self._ticks.values()) / os.sysconf("SC_CLK_TCK")

    def __enter__(self):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


# ------------------------------------------------------------------------------------------------ children


def _columns(ds) -> list[str]:
    """Columns with a numpy form (the reader rejects e.g. list<string>)."""
    from loader.convert import check_schema
    from loader.errors import ConfigError

    keep = []
    for name in ds.columns:
        try:
            check_schema(ds.schema, [name])
            keep.append(name)
        except ConfigError:
            pass
    return keep


def _mixing(ids, cum_rows) -> int:
    import numpy as np

    return int(np.unique(np.searchsorted(cum_rows, ids, side="right")).size)


def child(args) -> dict:
    """Run one measurement in this (fresh) process and return its figures."""
    import loader  # noqa: I001 - first, as a trainer would: its allocator setting must precede pyarrow (loader/_alloc.py)
    import numpy as np
    import pyarrow.parquet as pq

    from loader.convert import to_numpy

    ds = loader.open_dataset(args.url)
    columns = args.columns.split(",") if args.columns else _columns(ds)
    if "product_id" not in columns:
        columns = ["product_id", *columns]
    cum_rows = np.cumsum(ds.row_group_sizes())
    if args.mode == "torch":
        from loader.torch import make_dataloader  # imported before the clock starts, like the others
    if args.mode == "tf":
        import tensorflow  # noqa: F401

        from loader.tf import make_dataset
    mixes, rows, batches = [], 0, 0
    first = last = None
    own0 = resource.getrusage(resource.RUSAGE_SELF)
    warm = args.warm
    transform = None
    if args.transform != "none":  # "python" or "python:<rounds>"
        import functools

        from pytransform import hash_title_words  # bench/, the script's own directory

        rounds = int(args.transform.partition(":")[2] or 1)
        transform = functools.partial(hash_title_words, rounds=rounds) if rounds > 1 else hash_title_words

    def start_clock():  # after the untimed warm-up batches, if any
        nonlocal own0, t0
        own0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()

    with TreeRss() as tree:
        t0 = time.perf_counter()
        if args.mode == "raw":
            done = False
            for info in ds.files:
                pf = pq.ParquetFile(ds.file_path(info))
                for rb in pf.iter_batches(args.batch_size, columns=columns, use_threads=False):
                    b = to_numpy(rb)
                    if transform is not None:
                        b = transform(b)
                    if warm:
                        warm -= 1
                        if not warm:
                            start_clock()
                        continue
                    if first is None:
                        first = time.perf_counter() - t0
                    rows += len(b["product_id"])
                    mixes.append(_mixing(b["product_id"], cum_rows))
                    batches += 1
                    last = time.perf_counter()
                    if batches >= args.iterations:
                        done = True
                        break
                pf.close()
                if done:
                    break
        elif args.mode == "torch":
            stats = None
            it = iter(make_dataloader(ds.version_path, batch_size=args.batch_size, num_workers=2, columns=columns))
            for b in it:
                if first is None:
                    first = time.perf_counter() - t0
                ids = b["product_id"].numpy()
                rows += len(ids)
                mixes.append(_mixing(ids, cum_rows))
                batches += 1
                last = time.perf_counter()
                if batches >= args.iterations:
                    break
            del it  # shuts the DataLoader workers down (reaped before the CPU count below)
        elif args.mode == "tf":
            stats = None
            data = make_dataset(ds.version_path, batch_size=args.batch_size, columns=columns, num_epochs=None)
            for b in data.take(args.iterations):
                if first is None:
                    first = time.perf_counter() - t0
                ids = b["product_id"].numpy()
                rows += len(ids)
                mixes.append(_mixing(ids, cum_rows))
                batches += 1
                last = time.perf_counter()
        else:
            from loader import make_reader

            kwargs = {"pool": args.mode, "workers": args.workers} if args.workers else {"pool": args.mode}
            if args.decoded_cache:
                kwargs["decoded_cache_dir"] = args.decoded_cache
            if args.memory_budget:
                kwargs["memory_budget"] = args.memory_budget
            if args.min_mix is not None:  # what the reader did before it interleaved slices to keep mixing
                import loader.sizes

                loader.sizes.MIN_MIX = args.min_mix
            if transform is not None:
                kwargs["transform"] = transform
            with make_reader(
                ds.version_path, columns=columns, batch_size=args.batch_size, shuffle=True, seed=0,
                num_epochs=1 if args.epoch_only else None, **kwargs,
            ) as reader:
                for b in reader:
                    if warm:
                        warm -= 1
                        if not warm:
                            start_clock()
                        continue
                    if first is None:
                        first = time.perf_counter() - t0
                        if args.first_only:
                            rows = len(b["product_id"])
                            batches = 1
                            last = time.perf_counter()
                            break
                    rows += len(b["product_id"])
                    mixes.append(_mixing(b["product_id"], cum_rows))
                    batches += 1
                    last = time.perf_counter()
                    if batches >= args.iterations:
                        break
                stats = getattr(reader, "stats", None)
                stats = stats() if callable(stats) else stats
        ended = time.perf_counter()
    last = ended if last is None else last
    elapsed = last - t0  # to the last batch, as documented; closing the reader is timed apart (close_s)
    own = resource.getrusage(resource.RUSAGE_SELF)
    cpu = own.ru_utime + own.ru_stime - own0.ru_utime - own0.ru_stime + tree.descendants_cpu_s
    return {
        "cpu_s": cpu,
        "cpu_us_per_row": cpu / max(1, rows) * 1e6,
        "faults_per_krow": (own.ru_minflt - own0.ru_minflt) / max(1, rows) * 1000,
        "warm_batches": args.warm,
        "transform": args.transform,
        "mode": args.mode,
        "url": args.url,
        "rows": rows,
        "batches": batches,
        "elapsed_s": elapsed,
        "close_s": ended - last,
        "samples_per_s": rows / elapsed,
        "first_batch_s": first,
        "vmhwm_mb": status_kb("self", "VmHWM") / 1024,
        "tree_peak_mb": tree.peak_kb / 1024,
        "rg_per_batch_mean": float(np.mean(mixes)) if mixes else 0.0,
        "rg_per_batch_min": int(min(mixes)) if mixes else 0,
        "columns": columns,
        "files": len(ds.files),
        "row_groups": ds.num_row_groups,
        "stats": str(stats) if args.mode in ("serial", "thread", "process") and stats is not None else None,
    }


# ------------------------------------------------------------------------------------------------ parent


def ensure_caches(data: Path, rows: int, names) -> dict[str, str]:
    """Generate the benchmark caches ``names`` (of :data:`CACHES`) under ``data`` if they are missing; returns
    name -> dataset dir."""
    out = {}
    for name, extra in CACHES.items():
        target = data / name
        if name not in names:
            continue
        if not (target / "CURRENT").exists():
            cmd = [sys.executable, str(REPO / "bench" / "gen_data.py"), "--out", str(data), "--name", name]
            if name != "tiny":
                cmd += ["--rows", str(rows)]
            print("generating:", " ".join(cmd + extra), flush=True)
            subprocess.run(cmd + extra, check=True)
        out[name] = str(target)
    return out


def run_child(mode: str, url: str, args, *extra: str) -> dict:
    cmd = [
        sys.executable, str(Path(__file__).resolve()), "--child", mode, "--url", url,
        "--iterations", str(args.iterations), "--batch-size", str(args.batch_size), *extra,
    ]
    if args.workers:
        cmd += ["--workers", str(args.workers)]
    if args.columns:
        cmd += ["--columns", args.columns]
    if args.profile == mode and "--first-only" not in extra:
        cmd[1:1] = ["-m", "cProfile", "-s", "cumulative"]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        prof = Path(args.data) / f"profile-{mode}.txt"
        prof.write_text(proc.stdout + proc.stderr)
        print(f"cProfile of {mode}: {prof}", flush=True)
        line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("{"))
        return json.loads(line)
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        print(f"child {mode} on {url} failed:\n{proc.stderr}", file=sys.stderr, flush=True)
        return {"mode": mode, "error": last}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="/tmp/larder-bench", help="where the benchmark caches live / are generated")
    p.add_argument("--rows", type=int, default=200_000, help="rows of the 1x dataset (default 200000)")
    p.add_argument("--iterations", type=int, default=1000, help="batches per run (default 1000)")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--workers", type=int, default=None, help="reader workers (default: the reader's)")
    p.add_argument("--columns", default=None, help="comma-separated columns (default: all with a numpy form)")
    p.add_argument("--profile", choices=["raw", "serial", "thread", "process", "torch", "tf"],
                   help="run that child under cProfile")
    p.add_argument("--only", default=None,
                   help="comma-separated subset of raw,thread,process,4x,first (default); also serial, decoded, "
                        "decoded-cold, torch, tf, warm (raw and thread timed over batches N+1..2N), py (raw, "
                        "thread and process with a pure-Python transform), block (raw and thread on the 4x rows "
                        "in row groups of 120 MiB, the Spark job's layout: streamed in slices), small (thread "
                        "with memory_budget=128 MiB: slices of 10 row groups to keep mixing 8, against whole row "
                        "groups)")
    p.add_argument("--repeat", type=int, default=3, help="trials per run, interleaved; the median is shown (default 3)")
    p.add_argument("--child", choices=["raw", "serial", "thread", "process", "torch", "tf"], help=argparse.SUPPRESS)
    p.add_argument("--url", help=argparse.SUPPRESS)
    p.add_argument("--first-only", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--decoded-cache", default=None, help=argparse.SUPPRESS)
    p.add_argument("--epoch-only", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--memory-budget", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--min-mix", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--warm", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--transform", default="none", help=argparse.SUPPRESS)
    p.add_argument("--py-rounds", type=int, default=1,
                   help="hashing rounds per word of the --only py transform (default 1; more: a heavier transform)")
    args = p.parse_args(argv)
    if args.child:
        args.mode = args.child
        print(json.dumps(child(args)))
        return 0

    wanted = set((args.only or "raw,thread,process,4x,first").split(","))
    if "warm" in wanted:
        wanted |= {"raw warm", "thread warm"}
    if "py" in wanted:
        wanted |= {"raw py", "thread py", "process py"}
    if "block" in wanted:
        wanted |= {"raw block"}
    if "small" in wanted:
        wanted |= {"raw", "small", "small whole"}
    order = ("raw", "serial", "thread", "process", "decoded", "decoded-cold", "torch", "tf", "raw warm", "thread warm",
             "raw py", "thread py", "process py", "raw block", "block", "small", "small whole", "4x", "first")
    only = [k for k in order if k in wanted]
    decoded_dir = str(Path(args.data) / "decoded")
    py = f"python:{args.py_rounds}"
    runs = {  # key -> (child mode, cache, extra child arguments)
        "raw": ("raw", "base", ()),
        "serial": ("serial", "base", ()),
        "thread": ("thread", "base", ()),
        "process": ("process", "base", ()),
        "decoded": ("thread", "base", ("--decoded-cache", decoded_dir)),
        "decoded-cold": ("thread", "base", ("--decoded-cache", decoded_dir + "-cold")),
        "torch": ("torch", "base", ()),
        "tf": ("tf", "base", ()),
        "raw warm": ("raw", "base", ("--warm", str(args.iterations))),
        "thread warm": ("thread", "base", ("--warm", str(args.iterations))),
        "raw py": ("raw", "base", ("--transform", py)),
        "thread py": ("thread", "base", ("--transform", py)),
        "process py": ("process", "base", ("--transform", py)),
        "raw block": ("raw", "block", ()),
        "block": ("thread", "block", ()),
        "small": ("thread", "base", ("--memory-budget", str(128 << 20))),
        "small whole": ("thread", "base", ("--memory-budget", str(128 << 20), "--min-mix", "1")),
        "4x": ("thread", "base4x", ()),
        "first": ("thread", "tiny", ("--first-only",)),
    }
    caches = ensure_caches(Path(args.data), args.rows, {runs[k][1] for k in only})  # only those the runs use
    trials: dict[str, list[dict]] = {k: [] for k in only}
    if "decoded" in only:  # fill the decoded cache: one untimed pass over every row group
        shutil.rmtree(decoded_dir, ignore_errors=True)
        fill = argparse.Namespace(**{**vars(args), "iterations": 10**9})
        fill.mode = None
        run_child("thread", caches["base"], fill, "--decoded-cache", decoded_dir, "--epoch-only")
    for trial in range(args.repeat):  # interleaved, so a busy moment hits every run alike
        for key in only:
            mode, cache, extra = runs[key]
            url = caches[cache]
            if key == "decoded-cold":
                shutil.rmtree(decoded_dir + "-cold", ignore_errors=True)
            r = run_child(mode, url, args, *extra)
            trials[key].append(r)
            brief = {k: v for k, v in r.items() if k not in ("columns", "stats", "url")}
            print(f"trial {trial} {key}: {json.dumps(brief)}", flush=True)
    print_table({k: _median(v) for k, v in trials.items()}, args)
    for key, runs in trials.items():  # trials are interleaved: each trial's ratio compares runs made close together
        base = trials.get(_baseline(key, trials))
        if key.startswith("raw") or key == "first" or base is None:
            continue
        if all("error" not in r for r in runs + base):
            per = [r["samples_per_s"] / b["samples_per_s"] for r, b in zip(runs, base, strict=False)]
            print(f"ratio to raw per trial, {key}: {' '.join(f'{x:.2f}' for x in per)}")
    return 1 if any("error" in r for v in trials.values() for r in v) else 0


def _baseline(key: str, runs: dict) -> str:
    """The raw run a run is compared with: warm runs with the warm raw scan, transformed runs with the scan
    that applies the same transform (when measured)."""
    for suffix in (" warm", " py", " block"):
        if key == suffix.strip() and "raw" + suffix in runs:
            return "raw" + suffix
        if key.endswith(suffix) and "raw" + suffix in runs:
            return "raw" + suffix
    return "raw"


def _median(results: list[dict]) -> dict:
    """The trial with the median throughput (its other figures kept together), with the spread added."""
    failed = [r for r in results if "error" in r]
    if failed:
        return failed[0]
    by = "first_batch_s" if results[0]["batches"] == 1 else "samples_per_s"
    ordered = sorted(results, key=lambda r: r[by])
    mid = dict(ordered[len(ordered) // 2])
    mid["spread"] = (ordered[0]["samples_per_s"], ordered[-1]["samples_per_s"])
    mid["first_spread"] = (min(r["first_batch_s"] for r in results), max(r["first_batch_s"] for r in results))
    mid["rss_max"] = max(r["vmhwm_mb"] for r in results)
    mid["rss_median"] = float(sorted(r["vmhwm_mb"] for r in results)[len(results) // 2])
    return mid


def print_table(results: dict[str, dict], args) -> None:
    """The summary table (medians over the trials; min..max in brackets)."""
    print()
    any_r = next((r for r in results.values() if "error" not in r), {"columns": []})
    print(
        f"columns: {','.join(any_r['columns'])}; batch {args.batch_size}; {args.iterations} batches per run; "
        f"median of {args.repeat} interleaved trials"
    )
    head = (
        f"{'run':<24}{'samples/s':>10}{'(min..max)':>18}{'ratio':>7}{'1st batch s':>12}{'VmHWM MB':>10}"
        f"{'tree MB':>9}{'rg/b mean/min':>14}{'CPU us/row':>12}{'faults/krow':>12}{'close s':>9}"
    )
    print(head)
    print("-" * len(head))
    labels = {"raw": "raw pyarrow scan", "serial": "make_reader serial", "thread": "make_reader thread",
              "process": "make_reader process",
              "decoded": "thread, decoded warm", "decoded-cold": "thread, decoded cold",
              "torch": "torch DataLoader, 2 wk", "tf": "tf.data from_generator",
              "raw warm": "raw, batches N+1..2N", "thread warm": "thread, batches N+1..2N",
              "raw py": "raw + Python transform", "thread py": "thread + Python tr.",
              "process py": "process + Python tr.",
              "raw block": "raw, 120 MiB row groups", "block": "thread, 120 MiB rg",
              "small": "thread, 128 MiB budget", "small whole": "128 MiB, whole groups",
              "4x": "make_reader thread 4x", "first": "first batch, 10k files"}
    for key, r in results.items():
        if "error" in r:
            print(f"{labels[key]:<24} FAILED: {r['error']}")
            continue
        if key == "first":
            lo, hi = r["first_spread"]
            rate, spread, ratio, mix = "-", f"({lo:.3f}..{hi:.3f} s)", "-", "-"
        else:
            lo, hi = r["spread"]
            rate, spread = f"{r['samples_per_s']:.0f}", f"({lo:.0f}..{hi:.0f})"
            base = results.get(_baseline(key, results))
            ratio = f"{r['samples_per_s'] / base['samples_per_s']:.2f}" if base and "error" not in base else "-"
            mix = f"{r['rg_per_batch_mean']:.1f}/{r['rg_per_batch_min']}"
        print(
            f"{labels[key]:<24}{rate:>10}{spread:>18}{ratio:>7}{r['first_batch_s']:>12.3f}{r['vmhwm_mb']:>10.0f}"
            f"{r['tree_peak_mb']:>9.0f}{mix:>14}{r['cpu_us_per_row'] if key != 'first' else 0:>12.2f}"
            f"{r.get('faults_per_krow', 0):>12.0f}{r.get('close_s', 0):>9.3f}"
        )
    if "first" in results and "error" not in results["first"]:
        print(f"first batch cache: {results['first']['files']} files, {results['first']['row_groups']} row groups")
    results = {k: r for k, r in results.items() if "error" not in r}
    for key in ("serial", "thread", "process", "decoded", "decoded-cold", "thread warm", "thread py",
                "process py", "block"):
        if key in results and _baseline(key, results) in results:
            name = _baseline(key, results)
            base = results[name]["cpu_us_per_row"]
            print(
                f"CPU per row {key} / {name}: {results[key]['cpu_us_per_row'] / base:.2f}x -> ratio ceiling on "
                f"{os.cpu_count()} fully used cores: {os.cpu_count() * base / results[key]['cpu_us_per_row']:.2f}"
            )
    if "thread" in results and "4x" in results:
        t, q = results["thread"], results["4x"]
        print(
            f"peak RSS 4x / 1x (thread): VmHWM {q['rss_median'] / t['rss_median']:.2f}x on the medians "
            f"({q['rss_median']:.0f} / {t['rss_median']:.0f} MB), {q['rss_max'] / t['rss_max']:.2f}x on the maxima "
            f"({q['rss_max']:.0f} / {t['rss_max']:.0f} MB)"
        )
    if "thread py" in results and "process py" in results:
        t, q = results["thread py"], results["process py"]
        print(f"pure-Python transform ({args.py_rounds} round(s)): process / thread pool "
              f"{q['samples_per_s'] / t['samples_per_s']:.2f}x samples/s")
    for key in ("thread", "process", "thread py", "process py"):
        if key in results and results[key].get("stats"):
            print(f"reader stats ({key}, median trial): {results[key]['stats']}")


if __name__ == "__main__":
    raise SystemExit(main())
