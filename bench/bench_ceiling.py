"""What two cores allow: the work a shuffling reader cannot skip, alone, against the raw scan, in one run.

``bench/bench_reader.py`` compares ``make_reader`` with a raw pyarrow scan. This script measures how far
apart the two can be at best on the machine it runs on. Each run is a fresh process on the same cache
(``bench/gen_data.py``'s ``base``), over the rows of the first N batches, interleaved over trials:

* ``raw``     — ``bench_reader.py``'s raw scan: ``iter_batches(100)`` plus per-column conversion.
* ``work x1`` — only what a reader that mixes row groups into every batch cannot skip, with no pipeline,
  queue, stats or hand-off between threads: each window of row groups read whole and checked against the
  manifest (``Dataset.read_row_group``), assembled and permuted (``loader.window.assemble``), gathered
  eight batches at a time (``Window.gather``), converted to numpy and split into batches — the reader's own
  functions, on one thread.
* ``work x2`` — the same on two threads, each taking every other window (nothing shared, nothing awaited):
  the most two cores can do with this work. ``work x2 / raw`` bounds what any pipeline around it reaches.
* ``copy x1`` / ``copy x2`` — ``numpy.copyto`` of 64 MiB arrays on one and two threads: whether memory
  bandwidth, which the reader's copies of image bytes need, grows with a second core.

Example::

    python bench/bench_ceiling.py --data /tmp/larder-bench --repeat 5
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def work_child(url: str, rows_wanted: int, threads: int, window: int, batch_size: int) -> dict:
    """Read, check, decode, shuffle, gather, convert and split the windows holding ``rows_wanted`` rows."""
    import loader  # noqa: I001 - first, as a trainer would (its allocator setting precedes pyarrow)
    from loader.convert import split_batch, to_numpy
    from loader.window import assemble

    ds = loader.open_dataset(url)
    locations = ds.row_group_index()
    sizes = ds.row_group_sizes()
    windows, rows = [], 0
    for i in range(0, len(locations), window):
        windows.append(list(range(i, min(i + window, len(locations)))))
        rows += sum(sizes[g] for g in windows[-1])
        if rows >= rows_wanted:
            break
    setup = SimpleNamespace(seed=0, shuffle=True)
    plan = SimpleNamespace(epoch=0, rank=0, world_size=1)
    done = [0] * threads
    step = 8 * batch_size

    def run(t: int) -> None:
        for w_index in range(t, len(windows), threads):
            parts = [(ds.read_row_group(ds.files[locations[g][0]], locations[g][1]), g, None) for g in windows[w_index]]
            w = assemble(parts, setup, plan, w_index, 0, False)
            n = w.rows.num_rows
            for a in range(0, n, step):
                b = min(n, a + step)
                split_batch(to_numpy(w.gather(a, b)), [*range(0, b - a, batch_size), b - a])
                done[t] += b - a

    cpu0, t0 = _cpu(), time.perf_counter()
    pool = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    elapsed, cpu = time.perf_counter() - t0, _cpu() - cpu0
    n = sum(done)
    return {"rows": n, "samples_per_s": n / elapsed, "cpu_us_per_row": cpu / n * 1e6}


def copy_child(threads: int, mib: int = 64, rounds: int = 20) -> dict:
    """GB/s copied by ``threads`` threads, each copying its own ``mib`` MiB array ``rounds`` times."""
    import numpy as np

    src = [np.ones(mib << 20, np.uint8) for _ in range(threads)]
    dst = [np.ones(mib << 20, np.uint8) for _ in range(threads)]  # touched: no first-touch faults timed

    def run(t: int) -> None:
        for _ in range(rounds):
            np.copyto(dst[t], src[t])

    t0 = time.perf_counter()
    pool = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    return {"gb_per_s": threads * rounds * (mib << 20) / (time.perf_counter() - t0) / 1e9}


def _run(args: list[str]) -> dict:
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="/tmp/larder-bench", help="where bench_reader.py keeps its caches")
    p.add_argument("--iterations", type=int, default=1000, help="batches' worth of rows per run (default 1000)")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--window", type=int, default=10, help="row groups per window (the reader's on base: 10)")
    p.add_argument("--repeat", type=int, default=3, help="interleaved trials; medians are shown (default 3)")
    p.add_argument("--child", choices=["work", "copy"], help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--url", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child == "work":
        print(json.dumps(work_child(args.url, args.iterations * args.batch_size, args.threads, args.window,
                                    args.batch_size)))
        return 0
    if args.child == "copy":
        print(json.dumps(copy_child(args.threads)))
        return 0

    from bench_reader import ensure_caches  # noqa: PLC0415 - the script's own directory

    url = ensure_caches(Path(args.data), 200_000, {"base"})["base"]
    me = str(Path(__file__).resolve())
    common = ["--url", url, "--iterations", str(args.iterations), "--batch-size", str(args.batch_size)]
    runs = {
        "raw": [str(REPO / "bench" / "bench_reader.py"), "--child", "raw", *common],
        "work x1": [me, "--child", "work", "--threads", "1", "--window", str(args.window), *common],
        "work x2": [me, "--child", "work", "--threads", "2", "--window", str(args.window), *common],
        "copy x1": [me, "--child", "copy", "--threads", "1"],
        "copy x2": [me, "--child", "copy", "--threads", "2"],
    }
    trials: dict[str, list[dict]] = {k: [] for k in runs}
    for trial in range(args.repeat):
        for key, cmd in runs.items():
            r = _run(cmd)
            trials[key].append(r)
            shown = {k: r[k] for k in ("samples_per_s", "cpu_us_per_row", "rows", "gb_per_s") if k in r}
            print(f"trial {trial} {key}: {json.dumps(shown)}", flush=True)
    med = {k: {f: statistics.median(r[f] for r in v) for f in v[0] if isinstance(v[0][f], float)}
           for k, v in trials.items()}
    print(f"\n{args.iterations} batches of {args.batch_size} rows; windows of {args.window} row groups; "
          f"median of {args.repeat} interleaved trials")
    print(f"{'run':<10} {'samples/s':>10} {'CPU us/row':>11} {'ratio to raw':>13}")
    for key in ("raw", "work x1", "work x2"):
        m = med[key]
        print(f"{key:<10} {m['samples_per_s']:>10.0f} {m['cpu_us_per_row']:>11.2f} "
              f"{m['samples_per_s'] / med['raw']['samples_per_s']:>13.2f}")
    per = [w["samples_per_s"] / r["samples_per_s"] for w, r in zip(trials["work x2"], trials["raw"], strict=True)]
    print(f"work x2 / raw per trial: {' '.join(f'{x:.2f}' for x in per)}")
    print(f"copy GB/s: 1 thread {med['copy x1']['gb_per_s']:.1f}, 2 threads {med['copy x2']['gb_per_s']:.1f} "
          f"({med['copy x2']['gb_per_s'] / med['copy x1']['gb_per_s']:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
