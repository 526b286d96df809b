"""Peak memory of `mufasa align-train` against --max-len, end to end on synthetic data.

Prepares `synthetic --preset large` once (fuse-train with 1 LightGCN and 1 MFL epoch: the
benchmark measures the SAL's memory, not the fusion's quality), then runs one align-train
epoch per --max-len, each in a fresh process, and reports the process's peak RSS, the growth
over the smallest --max-len, the memory training itself adds (the peak RSS after the first
training step minus the RSS at that step: data loaded, model built; Linux's clear_refs resets
the peak mark there), and the mean history length each point actually read (a history is
never longer than the user's train sequence: 1,000-1,600 items on `large`).

    python benchmarks/align_memory.py                                # large; 256 512 1024 2048
    python benchmarks/align_memory.py --preset tiny --max-lens 8 16 --json
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def one_point(run: Path, max_len: int, objective: str, batch: int | None) -> dict:
    """In a child process: one align-train epoch; peak RSS of this process."""
    import dataclasses

    import numpy as np
    import torch

    from mufasa_cli.config import AlignConfig
    from mufasa_cli.data.sequences import load_sequences
    from mufasa_cli.sal.train import run_align

    torch.set_num_threads(max(1, torch.get_num_threads()))
    cfg = AlignConfig()
    sal = dataclasses.replace(cfg.sal, max_len=max_len, objective=objective)
    schedule = "train_all" if objective == "all" else "train"
    train = dataclasses.replace(getattr(cfg, schedule), epochs=1, **({"batch_size": batch} if batch else {}))
    cfg = dataclasses.replace(cfg, sal=sal, **{schedule: train})
    seqs = load_sequences(run / "data")
    train_lengths = [len(seqs.of(u)[0]) for u in np.flatnonzero(seqs.roles == "train")]
    del seqs
    marks: dict[str, float | None] = {}

    def on_step(name, epoch, epochs, step, steps, losses):
        if "start" not in marks:  # the first step: data loaded, model built; training memory from here
            marks["start"] = _reset_peak()

    t0 = time.perf_counter()
    manifest = run_align(run, cfg, seed=0, device=torch.device("cpu"), resume=False, force=True, on_step=on_step)
    training_peak = _status_mb("VmHWM")
    start = marks.get("start")
    return {
        "objective": objective,
        "max_len": max_len,
        "batch_size": train.batch_size,
        "valid_history_mean": float(np.mean(np.minimum(train_lengths, max_len))),
        "peak_rss_mb": _rss_mb(),
        "rss_at_first_step_mb": start,
        "training_growth_mb": training_peak - start if start is not None and training_peak is not None else None,
        "seconds": time.perf_counter() - t0,
        "valid_ndcg@10": manifest["valid"]["NDCG@10"],
    }


def _status_mb(field: str) -> float | None:
    """VmRSS / VmHWM of this process from /proc (Linux), MB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def _reset_peak() -> float | None:
    """Reset the peak-RSS mark (Linux: clear_refs 5) and return the current RSS, MB."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return None
    return _status_mb("VmRSS")


def ensure_run(work: Path, preset: str) -> Path:
    run = work / f"synthetic-{preset}"
    if (run / "fuse" / "manifest.json").is_file():
        return run
    mufasa = [sys.executable, "-m", "mufasa_cli.cli.app"]
    text = ["--text-encoder", "synthetic"]
    subprocess.run(
        [*mufasa, "prepare", "synthetic", "--preset", preset, "--out", str(run), "--force", *text], check=True
    )
    subprocess.run([*mufasa, "fuse-train", str(run), "--epochs", "1", "--cf-epochs", "1", "--force"], check=True)
    return run


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="large", choices=["tiny", "default", "large"])
    p.add_argument("--max-lens", type=int, nargs="+", default=[256, 512, 1024, 2048])
    p.add_argument("--objective", default="last", choices=["last", "all"])
    p.add_argument("--batch-size", type=int, default=None, help="users per batch (default: the recipe's)")
    p.add_argument("--work", type=Path, default=Path("benchmarks/.work"), help="where the prepared run is kept")
    p.add_argument("--json", action="store_true", help="print one JSON list instead of the table")
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        point = one_point(Path(args.child[0]), int(args.child[1]), args.objective, args.batch_size)
        print(json.dumps(point))
        return 0
    run = ensure_run(args.work, args.preset)
    rows = []
    for max_len in args.max_lens:
        cmd = [sys.executable, __file__, "--objective", args.objective, "--child", str(run), str(max_len)]
        if args.batch_size:
            cmd += ["--batch-size", str(args.batch_size)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    first = rows[0]
    for r in rows:
        r["growth_mb"] = r["peak_rss_mb"] - first["peak_rss_mb"]
        r["len_ratio"] = r["valid_history_mean"] / first["valid_history_mean"]
        train = r["training_growth_mb"]
        r["training_mb_per_item"] = train / r["valid_history_mean"] if train is not None else None
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"align-train memory, synthetic --preset {args.preset}, objective {args.objective}, one epoch per point")
    print("training MB = peak RSS after the first step minus RSS at the first step (Linux clear_refs)")
    header = f"{'--max-len':>9} {'mean valid L':>12} {'L ratio':>7} {'peak RSS MB':>11} {'training MB':>11}"
    print(header + f" {'ratio':>6} {'MB / item':>9} {'s':>6}")
    base = first["training_growth_mb"]
    for r in rows:
        train = r["training_growth_mb"]
        cells = (
            (f"{train:>11.0f}", f"{train / base:>6.2f}", f"{r['training_mb_per_item']:>9.3f}")
            if train is not None and base
            else (f"{'-':>11}", f"{'-':>6}", f"{'-':>9}")
        )
        print(
            f"{r['max_len']:>9} {r['valid_history_mean']:>12.0f} {r['len_ratio']:>7.2f} {r['peak_rss_mb']:>11.0f} "
            + " ".join(cells)
            + f" {r['seconds']:>6.1f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
