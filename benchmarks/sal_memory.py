"""Peak memory of one SAL training step (forward + backward) against history length.

Each (attention, L) point runs in a fresh subprocess, so its peak RSS is its own; the table
shows the peak RSS above the process's baseline after imports, and the ratio of each point
to the first length of the same attention type, measured in the same run. The sparse path
should grow linearly in L (ratio ~ L / L0); full attention over all items is the reference.

    python benchmarks/sal_memory.py                      # B=64, L = 256 512 1024 2048
    python benchmarks/sal_memory.py --lengths 128 256 --batch 8 --json
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def one_point(attention: str, length: int, batch: int, dim: int) -> dict:
    """Run in a child: build inputs, one step, report peak RSS growth and time."""
    import torch

    from mufasa_cli.sal.config import SALConfig
    from mufasa_cli.sal.model import SALEncoder

    torch.manual_seed(0)
    model = SALEncoder(dim, SALConfig(d_model=dim, num_heads=2, attention=attention, max_len=max(length, 8)))
    z = torch.randn(batch, length, dim)
    lengths = torch.full((batch,), length)
    model.users(z[:1, :8], torch.tensor([8]))[0].sum().backward()  # warm up kernels and allocator
    model.zero_grad()
    base = _rss_mb()
    t0 = time.perf_counter()
    u, _ = model.users(z, lengths)
    u.pow(2).sum().backward()
    seconds = time.perf_counter() - t0
    return {"attention": attention, "L": length, "B": batch, "peak_mb_above_base": _rss_mb() - base, "seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[256, 512, 1024, 2048])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--attention", nargs="+", default=["sparse", "full"], choices=["sparse", "full", "mean"])
    p.add_argument("--json", action="store_true", help="print one JSON list instead of the table")
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(one_point(args.child[0], int(args.child[1]), args.batch, args.dim)))
        return 0
    rows = []
    for attention in args.attention:
        for length in args.lengths:
            cmd = [
                sys.executable,
                __file__,
                "--child",
                attention,
                str(length),
                "--batch",
                str(args.batch),
                "--dim",
                str(args.dim),
            ]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
    for attention in args.attention:
        first = next(r for r in rows if r["attention"] == attention)
        for r in rows:
            if r["attention"] == attention:
                r["L_ratio"] = r["L"] / first["L"]
                r["memory_ratio"] = r["peak_mb_above_base"] / max(first["peak_mb_above_base"], 1e-9)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"SAL training step, B={args.batch}, d={args.dim}: peak RSS above baseline (fresh process per point)")
    print(f"{'attention':<10}{'L':>7}{'peak MB':>10}{'x L0':>8}{'L/L0':>8}{'seconds':>10}")
    for r in rows:
        print(
            f"{r['attention']:<10}{r['L']:>7}{r['peak_mb_above_base']:>10.1f}{r['memory_ratio']:>8.2f}{r['L_ratio']:>8.1f}{r['seconds']:>10.3f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
