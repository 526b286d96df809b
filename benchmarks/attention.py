"""Forward + backward time and peak memory of the SAL's sparse attention against full causal
attention (torch's scaled_dot_product_attention) and against mean pooling, per history length.

Every point is one (setting, objective, L) with the same token budget B * L, d = 64, 2 heads:
- `sal`: the SAL encoder (window + block + selective branches, the gate), reference kernel;
- `sal_fast`: the same model with the fast kernel (align-train's default): same results;
- `sal_compiled`, `sal_shared_compiled` (asked for by --variants): `sal_fast`, `sal_shared`
  through torch.compile (Inductor); the warm-up step compiles, so the timed steps are compiled;
- `sal_shared`: the fast kernel with `selection: query_block` (objective `all` only): the b
  queries of a query block share the top-k of the block's first query (NSA-style);
- `sal_flex` (CUDA only): the same model as `sal_shared` through FlexAttention block masks;
- `sdpa`: the same towers and output with one full causal attention through
  F.scaled_dot_product_attention instead of the three branches;
- `mean`: the same towers and output with mean pooling of the history.
Objective `last` has one query per user (the paper's); `all` makes every position a causal
query. Settings: `default` (block 8, top-4, the paper's window of 4 / 8) and `long` (block 32,
top-8, window 64). Each point runs in a fresh child process, timed as the median of --repeat
steps after one warm-up step. Peak memory: on CPU the growth of the process's peak resident
size from just before the first step (inputs and weights already made) to the end, and (tensor
MB) the peak of torch's own allocations during one more step, from the profiler's memory
events (the RSS also holds what the C allocator keeps after frees); on CUDA, torch's peak
allocation for both.
A point that runs out of memory or past --timeout is reported as not fitting. The ratios
compare each variant with `sdpa` at the same point, measured in the same run.

Then `embed` (objective `last`, forward only, fast kernel, no gradients, as `mufasa embed`
runs it over a 20,000-item catalogue, histories padded and gathered included): users per
second and the history vectors read (B * L * d * 4 bytes) per second, against the bound of
reading them at the bandwidth of a plain torch copy measured in the same run.

    python benchmarks/attention.py                                   # CPU, L = 128 ... 8192
    python benchmarks/attention.py --device cuda --lengths 128 512 2048 8192 32768
    python benchmarks/attention.py --tiny --json                     # the test suite's smoke run
    python benchmarks/attention.py --objectives all --settings default --lengths 8192 \
        --variants sal_fast sal_compiled sdpa --no-embed               # the compiled kernel's headline

A run other than --tiny or --json also writes its table, with the command, to
benchmarks/results/<date>-attention-<device>.md (--results DIR elsewhere).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

CATALOGUE = 20_000  # embed: items in the catalogue the histories draw from
VARIANTS = ("sal", "sal_fast", "sal_compiled", "sal_shared", "sal_shared_compiled", "sal_flex", "sdpa", "mean")
DEFAULT_VARIANTS = tuple(v for v in VARIANTS if "compiled" not in v)  # compiling every point: an hour
SETTINGS = {
    "default": {"block_size": 8, "num_selected": 4, "window": 0},
    "long": {"block_size": 32, "num_selected": 8, "window": 64},
}


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _build(variant: str, setting: str, objective: str, length: int, dim: int, device):
    import torch
    from torch.nn import functional as F

    from mufasa_cli.sal.config import SALConfig
    from mufasa_cli.sal.model import QKV, SALEncoder

    attention = {"sdpa": "full", "mean": "mean"}.get(variant, "sparse")
    selection = "query_block" if variant in ("sal_shared", "sal_shared_compiled", "sal_flex") else "query"
    cfg = SALConfig(
        d_model=dim,
        num_heads=2,
        max_len=length,
        objective=objective,
        attention=attention,
        selection=selection,
        **SETTINGS[setting],
    )
    model = SALEncoder(dim, cfg).to(device)
    kernels = {"sal": "reference", "sal_flex": "flex", "sal_compiled": "compiled", "sal_shared_compiled": "compiled"}
    model.kernel = kernels.get(variant, "fast")
    if variant != "sdpa":
        return model, model.encode

    proj: QKV = model.full
    H = cfg.num_heads

    def encode(z, lengths, qpos):
        """Every history has length L here, so no padding mask: `all` is plain causal SDPA, `last`
        one query over all keys."""
        h = model.history(z, lengths)
        B, L, D = h.shape
        q = h[torch.arange(B, device=h.device)[:, None], qpos]  # (B, Q, D)
        split = lambda x: x.view(B, -1, H, D // H).transpose(1, 2)  # noqa: E731
        out = F.scaled_dot_product_attention(
            split(proj.q(q)), split(proj.k(h)), split(proj.v(h)), is_causal=qpos.shape[1] == L
        )
        return model.finish(out.transpose(1, 2).reshape(B, -1, D), q), None

    return model, encode


def one_point(
    variant: str, setting: str, objective: str, length: int, batch: int, dim: int, repeat: int, device_name: str
) -> dict:
    """In a child process: warm-up, then `repeat` timed forward + backward steps."""
    import torch

    device = torch.device(device_name)
    torch.manual_seed(0)
    model, encode = _build(variant, setting, objective, length, dim, device)
    z = torch.randn(batch, length, dim, device=device)
    lengths = torch.full((batch,), length, device=device)
    qpos = (
        torch.arange(length, device=device).expand(batch, length).contiguous()
        if objective == "all"
        else (lengths - 1)[:, None]
    )

    def step() -> None:
        u = encode(z, lengths, qpos)[0]  # the explanation dropped before backward, as align-train does
        u.float().pow(2).sum().backward()
        model.zero_grad(set_to_none=True)

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    base = _rss_mb()
    step()  # warm-up: kernels, allocator
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    if device.type == "cuda":
        peak = tensor_peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = _rss_mb() - base
        tensor_peak = _cpu_tensor_peak_mb(step)
    return {"seconds": sorted(times)[len(times) // 2], "peak_mb": peak, "tensor_peak_mb": tensor_peak}


def _cpu_tensor_peak_mb(step) -> float | None:
    """The peak of torch's own CPU allocations (live tensors) during one more step, from the
    profiler's memory events: what torch.cuda.max_memory_allocated reports on a GPU. The RSS
    peak (peak_mb) also holds what the C allocator keeps after frees; None where the profiler
    gives no memory events."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    try:
        events = prof.profiler.kineto_results.events()
    except AttributeError:
        return None
    changes = sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]")
    if not changes:
        return None
    live = peak = 0
    for _, change in changes:
        live += change
        peak = max(peak, live)
    return peak / 2**20


def embed_point(setting: str, length: int, batch: int, dim: int, repeat: int, device_name: str) -> dict:
    """In a child process: user embeddings as `mufasa embed` computes them (A_hist once per
    catalogue item, then each history's rows gathered; one query per user), no gradients."""
    import torch

    from mufasa_cli.sal.embed import user_embeddings

    device = torch.device(device_name)
    torch.manual_seed(0)
    model, _ = _build("sal_fast", setting, "last", length, dim, device)
    z = torch.randn(CATALOGUE, dim, device=device)
    histories = list(torch.randint(0, CATALOGUE, (batch, length)).numpy())
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    user_embeddings(model, z, histories[:2], length)
    sync()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        user_embeddings(model, z, histories, length)
        sync()
        times.append(time.perf_counter() - t0)
    seconds = sorted(times)[len(times) // 2]
    return {"seconds": seconds, "history_bytes": batch * length * dim * 4}


def _child(args, row: dict, variant: str, setting: str, objective: str, length: int, batch: int) -> dict:
    """Run one point in a fresh process: row + its JSON result, or row marked as not fitting."""
    cmd = [sys.executable, __file__, "--child", variant, setting, objective, str(length), str(batch)]
    cmd += ["--dim", str(args.dim), "--repeat", str(args.repeat), "--device", args.device]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {**row, "fits": False, "why": f"over {args.timeout} s"}
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["killed"])[-1]
        return {
            **row,
            "fits": False,
            "why": "out of memory" if "memory" in last.lower() or out.returncode < 0 else last[:80],
        }
    return {**row, "fits": True, **json.loads(out.stdout.strip().splitlines()[-1])}


def run_point(args, variant: str, setting: str, objective: str, length: int) -> dict:
    batch = max(1, args.budget // length)
    row = {"variant": variant, "setting": setting, "objective": objective, "L": length, "B": batch}
    return _child(args, row, variant, setting, objective, length, batch)


def embed_row(args, setting: str, length: int, bandwidth: float) -> dict:
    """One embed point; of_bound = (history bytes / copy bandwidth) / measured seconds."""
    batch = max(1, args.embed_budget // length)
    r = _child(args, {"setting": setting, "L": length, "B": batch}, "embed", setting, "last", length, batch)
    if not r["fits"]:
        return r
    gb_per_s = r["history_bytes"] / r["seconds"] / 1e9
    return {**r, "users_per_s": batch / r["seconds"], "gb_per_s": gb_per_s, "of_bound": gb_per_s / bandwidth}


def add_ratios(rows: list[dict]) -> None:
    """speedup = sdpa seconds / variant seconds, memory = variant peak / sdpa peak (RSS on CPU),
    tensor memory = the same for the peak of live tensors, same point."""
    ref = {(r["setting"], r["objective"], r["L"]): r for r in rows if r["variant"] == "sdpa" and r["fits"]}
    for r in rows:
        base = ref.get((r["setting"], r["objective"], r["L"]))
        if r["fits"] and base:
            r["speedup_vs_sdpa"] = base["seconds"] / r["seconds"]
            r["memory_vs_sdpa"] = r["peak_mb"] / max(base["peak_mb"], 1e-9)
            if r.get("tensor_peak_mb") is not None and base.get("tensor_peak_mb"):
                r["tensor_memory_vs_sdpa"] = r["tensor_peak_mb"] / base["tensor_peak_mb"]


def copy_bandwidth_gbs(device_name: str, mb: int = 256) -> float:
    """A plain torch copy's bandwidth (read + write bytes per second): the bound's denominator."""
    import torch

    x = torch.empty(mb * 2**18, device=device_name)  # mb MiB of float32
    y = torch.empty_like(x)
    y.copy_(x)
    t0 = time.perf_counter()
    for _ in range(5):
        y.copy_(x)
    if device_name == "cuda":
        torch.cuda.synchronize()
    return 5 * 2 * x.numel() * 4 / (time.perf_counter() - t0) / 1e9


def write_results(args, argv: list[str] | None, lines: list[str]) -> None:
    """benchmarks/results/<date>-attention-<device>.md: the command and the table."""
    import datetime
    import shlex
    from pathlib import Path

    folder = Path(args.results)
    folder.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/attention.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    path = folder / f"{datetime.date.today().isoformat()}-attention-{args.device}.md"
    text = (
        f"# SAL attention against SDPA ({args.device})\n\n```\n{command}\n```\n\n```\n" + "\n".join(lines) + "\n```\n"
    )
    path.write_text(text)
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--lengths", type=int, nargs="+", default=[128, 512, 2048, 8192])
    p.add_argument("--budget", type=int, default=16384, help="tokens per step: B = max(1, budget // L)")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--objectives", nargs="+", default=["last", "all"], choices=["last", "all"])
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS), choices=VARIANTS)
    p.add_argument("--results", default="benchmarks/results", help="folder for the dated results file")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument(
        "--embed-budget", type=int, default=2**21, help="embed: history items per call, B = max(1, budget // L)"
    )
    p.add_argument("--no-embed", action="store_true", help="skip the embed throughput table")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per point before it counts as not fitting")
    p.add_argument("--tiny", action="store_true", help="L = 24 (not a multiple of the block), budget 64, 1 repeat")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        v, s, o, length, batch = args.child
        point = (
            embed_point(s, int(length), int(batch), args.dim, args.repeat, args.device)
            if v == "embed"
            else one_point(v, s, o, int(length), int(batch), args.dim, args.repeat, args.device)
        )
        print(json.dumps(point))
        return 0
    if args.tiny:
        args.lengths, args.budget, args.repeat, args.embed_budget = [24], 64, 1, 96
    rows = [
        run_point(args, v, s, o, length)
        for s in args.settings
        for o in args.objectives
        for length in args.lengths
        for v in args.variants
        if v not in ("sal_shared", "sal_shared_compiled", "sal_flex") or o == "all"  # query blocks: causal queries only
        if v != "sal_flex" or args.device == "cuda"  # FlexAttention has no backward on CPU
    ]
    add_ratios(rows)
    bandwidth = copy_bandwidth_gbs(args.device, 16 if args.tiny else 256)
    embeds = (
        []
        if args.no_embed
        else [embed_row(args, s, length, bandwidth) for s in args.settings for length in args.lengths]
    )
    if args.json:
        report = {"device": args.device, "copy_gb_per_s": bandwidth, "rows": rows, "embed": embeds}
        print(json.dumps(report, indent=2))
        return 0
    lines: list[str] = []

    def out(text: str) -> None:
        print(text)
        lines.append(text)

    out(f"forward + backward, {args.device}, d={args.dim}, B*L = {args.budget}; ratios against sdpa at the same point")
    head = (
        f"{'setting':<8}{'objective':<10}{'L':>7}{'B':>5}  {'variant':<11}{'seconds':>10}{'peak MB':>10}"
        f"{'tensor MB':>10}{'speedup':>9}{'memory':>8}{'tensors':>8}"
    )
    out(head)
    for r in rows:
        lead = f"{r['setting']:<8}{r['objective']:<10}{r['L']:>7}{r['B']:>5}  {r['variant']:<11}"
        if not r["fits"]:
            out(f"{lead}{'did not fit: ' + r['why']:>37}")
            continue
        speed = f"{r['speedup_vs_sdpa']:>8.2f}x" if "speedup_vs_sdpa" in r else f"{'-':>9}"
        memory = f"{r['memory_vs_sdpa']:>7.2f}x" if r.get("memory_vs_sdpa") is not None else f"{'-':>8}"
        tensors = f"{r['tensor_memory_vs_sdpa']:>7.2f}x" if "tensor_memory_vs_sdpa" in r else f"{'-':>8}"
        tensor_mb = f"{r['tensor_peak_mb']:>10.1f}" if r.get("tensor_peak_mb") is not None else f"{'-':>10}"
        out(f"{lead}{r['seconds']:>10.4f}{r['peak_mb']:>10.1f}{tensor_mb}{speed}{memory}{tensors}")
    if embeds:
        out("embed (objective last, forward only, fast kernel): history read against the copy-bandwidth bound")
        out(f"{'setting':<8}{'L':>7}{'B':>6}{'seconds':>10}{'users/s':>10}{'GB/s':>8}{'of bound':>10}")
        for r in embeds:
            lead = f"{r['setting']:<8}{r['L']:>7}{r['B']:>6}"
            if not r["fits"]:
                out(f"{lead}  did not fit: {r['why']}")
                continue
            speed = f"{r['seconds']:>10.4f}{r['users_per_s']:>10.0f}{r['gb_per_s']:>8.2f}"
            out(f"{lead}{speed}{r['of_bound']:>9.1%}")
    out(f"plain torch copy: {bandwidth:.1f} GB/s (read + write)")
    if not args.tiny:
        write_results(args, argv, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
