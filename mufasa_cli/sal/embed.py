"""`embed` and `embed --explain`: user vectors from the trained SAL (train users up to their
test target, zero-shot users without their targets, new users from a file), item vectors for
every item, and one user's attention laid out for reading.

Legend: U users, N items, L history length, D SAL width.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import polars as pl
import torch

from mufasa_cli import artifacts
from mufasa_cli.data import schema
from mufasa_cli.data.sequences import Sequences, load_sequences, pad
from mufasa_cli.errors import DataSchemaError
from mufasa_cli.sal.files import (
    EXTERNAL_FILE,
    EXTERNAL_TABLE,
    ITEMS_FILE,
    STAGE,
    USERS_FILE,
    load_sal,
    load_z,
)
from mufasa_cli.sal.model import SALEncoder

EMBED_TOKENS = 1 << 14  # history positions per embedding batch


@torch.no_grad()
def user_embeddings(
    model: SALEncoder, z: torch.Tensor, histories: list[np.ndarray], max_len: int, tokens: int = EMBED_TOKENS
) -> torch.Tensor:
    """u (U, D) for each history (its most recent max_len items), in the order given.

    Users go in order of length, in batches of about `tokens` padded positions: little
    padding, and each (B, L, D) tensor small enough (4 MB at D = 64) that the allocator
    reuses its memory batch after batch. Tensors of tens of MB are fresh pages from the OS
    every time, and faulting them in cost more than the arithmetic (docs/performance.md, attention
    benchmark).
    """
    model.eval()
    tower = model.hist_tower(z)  # A_hist once per item, not once per history position
    out = torch.zeros(len(histories), model.cfg.d_model, device=z.device, dtype=z.dtype)
    sizes = np.array([max(min(len(h), max_len), 1) for h in histories], dtype=np.int64)
    order = np.argsort(sizes, kind="stable")
    s = 0
    while s < len(order):
        # sorted by length, a batch of n pads to its n-th history: the most n with n * that <= tokens
        longest = sizes[order[s : s + tokens]]
        count = max(1, int((longest * np.arange(1, len(longest) + 1) <= tokens).sum()))
        rows_of = order[s : s + count]
        ids, lengths = pad([histories[i] for i in rows_of], max_len)
        rows = tower.index_select(0, ids.to(z.device).flatten()).view(*ids.shape, -1)  # (B, L, D)
        out[torch.as_tensor(rows_of, device=z.device)] = model.users(rows, lengths.to(z.device), towered=True)[0]
        s += count
    return out


def read_external_users(path: Path, items: pl.DataFrame) -> tuple[list[str], list[np.ndarray], dict]:
    """Sequences from a parquet file of (user, item[, timestamp | pos]) rows with raw ids, in
    order of timestamp/pos when given, else file order. Unknown item ids are dropped and
    reported; users left with no known item get no embedding and are reported."""
    if not path.is_file():
        raise DataSchemaError(f"{path}: no such file")
    try:
        table = pl.read_parquet(path)
    except Exception as exc:  # polars raises several types for a file that is not parquet
        raise DataSchemaError(f"{path}: not a readable parquet file ({type(exc).__name__})") from None
    for col in ("user", "item"):
        if col not in table.columns:
            raise DataSchemaError(f"{path}: missing column {col!r} (columns: {', '.join(table.columns)})")
    order = next((c for c in ("timestamp", "pos") if c in table.columns), None)
    table = table.with_columns(pl.col("user").cast(pl.String), pl.col("item").cast(pl.String)).with_row_index("_row")
    if table["user"].null_count() or table["item"].null_count():
        raise DataSchemaError(f"{path}: null user or item id")
    table = table.sort(["user", order, "_row"] if order else ["user", "_row"], maintain_order=True)
    lookup = dict(zip(items["raw_id"].to_list(), items["item"].to_list(), strict=True))
    mapped = table.with_columns(pl.col("item").replace_strict(lookup, default=-1, return_dtype=pl.Int64).alias("_id"))
    unknown = mapped.filter(pl.col("_id") < 0)
    users, histories, empty = [], [], []
    for (user,), rows in mapped.filter(pl.col("_id") >= 0).group_by("user", maintain_order=True):
        users.append(user)
        histories.append(rows["_id"].to_numpy().astype(np.int64))
    known = set(users)
    empty = sorted(set(table["user"].unique().to_list()) - known)
    if not users:
        examples = ", ".join(repr(x) for x in unknown["item"].unique(maintain_order=True).head(3).to_list())
        raise DataSchemaError(
            f"{path}: no row names an item of this run ({table.height} rows"
            + (f"; unknown items such as {examples}" if examples else "")
            + "); item ids must be the dataset's raw ids"
        )
    report = {
        "file": str(path),
        "users": len(users),
        "rows": table.height,
        "unknown_item_rows": unknown.height,
        "unknown_items": unknown["item"].n_unique(),
        "unknown_examples": unknown["item"].unique(maintain_order=True).head(5).to_list(),
        "users_without_known_items": len(empty),
        "users_without_known_items_examples": empty[:5],
    }
    return users, histories, report


def run_embed(
    run_dir: Path, *, device: torch.device, force: bool, users_file: Path | None = None, kernel: str = "auto"
) -> dict:
    """User embeddings (train users: history up to the test target; zero-shot users: their
    history without the targets; users of `users_file`) and item embeddings for all items
    (cold ones through their z)."""
    started = time.perf_counter()
    out_dir = run_dir / "embed"
    artifacts.check_writable(out_dir, force)
    align_record = artifacts.input_record(run_dir / STAGE)  # what is read, recorded before reading it
    model, _ = load_sal(run_dir, device, kernel)
    z_np, _ = load_z(run_dir)
    z = torch.as_tensor(z_np, device=device)
    seqs = load_sequences(run_dir / "data")
    external = None
    if users_file is not None:
        items = artifacts.load_table(run_dir / "data" / schema.ITEMS_FILE, schema.ITEM_COLUMNS)
        external = read_external_users(users_file, items)
    users, histories = [], []
    for u in range(len(seqs.roles)):
        hist = seqs.embed_history(u)
        if len(hist):
            users.append(u)
            histories.append(hist)
    user_emb = user_embeddings(model, z, histories, model.cfg.max_len).cpu().numpy()
    with torch.no_grad():
        item_emb = model.items(z).cpu().numpy()
    roles = seqs.roles[users]
    counts = {
        "users": len(users),
        "train_users": int((roles == "train").sum()),
        "zero_shot_users": int((roles == "zero_shot").sum()),
        "items": len(item_emb),
        "dim": int(item_emb.shape[1]),
    }
    with artifacts.stage_writer(out_dir, force=force) as tmp:
        artifacts.save_tensors(tmp / USERS_FILE, {"user": np.array(users, dtype=np.int64), "emb": user_emb})
        artifacts.save_tensors(tmp / ITEMS_FILE, {"emb": item_emb})
        extra = {}
        if external is not None:
            ext_users, ext_hist, report = external
            ext_emb = user_embeddings(model, z, ext_hist, model.cfg.max_len).cpu().numpy()
            artifacts.save_tensors(tmp / EXTERNAL_FILE, {"emb": ext_emb.reshape(len(ext_users), -1)})
            table = pl.DataFrame(
                {"user": ext_users, "row": np.arange(len(ext_users)), "length": [len(h) for h in ext_hist]},
                schema={"user": pl.String, "row": pl.Int64, "length": pl.Int64},
            )
            artifacts.save_table(tmp / EXTERNAL_TABLE, table)
            counts["external_users"] = len(ext_users)
            extra["external"] = report
        manifest = artifacts.write_manifest(
            tmp,
            stage="embed",
            config={
                "max_len": model.cfg.max_len,
                "users_file": str(users_file) if users_file else None,
                "kernel": model.kernel,
            },
            seed=None,
            inputs={"align": align_record},
            counts=counts,
            wall_time_s=time.perf_counter() - started,
            extra=extra,
        )
    return manifest


def find_user(seqs: Sequences, user: str, data_dir: Path) -> int:
    """A user by raw id, or by internal index when no raw id matches."""
    hits = np.flatnonzero(seqs.raw_ids == user)
    if len(hits):
        return int(hits[0])
    if user.isdigit() and int(user) < len(seqs.roles):
        return int(user)
    raise DataSchemaError(f"user {user!r} is not in {data_dir / schema.USERS_FILE} (neither a raw id nor an index)")


@torch.no_grad()
def explain(run_dir: Path, user: str, *, device: torch.device, top: int = 5, kernel: str = "auto") -> dict:
    """Why the SAL embeds `user` as it does: the history it reads (every item but the test
    targets, the most recent max_len), the interest blocks with their block-attention weights,
    the selected blocks, the gates, the top-weighted items of each branch, and the top
    recommendations (unseen items by u . e), each with its title."""
    model, manifest = load_sal(run_dir, device, kernel)
    data_dir = run_dir / "data"
    z = torch.as_tensor(load_z(run_dir)[0], device=device)
    seqs = load_sequences(data_dir)
    index = find_user(seqs, user, data_dir)
    full = seqs.embed_history(index)
    if not len(full):
        raise DataSchemaError(f"user {user!r} has no history to embed")
    hist = full[-model.cfg.max_len :]
    offset = len(full) - len(hist)  # position in `hist` + offset = position in the user's sequence
    items = artifacts.load_table(data_dir / schema.ITEMS_FILE, schema.ITEM_COLUMNS).sort("item")
    titles = items["title"].fill_null("").to_list()
    raw = items["raw_id"].to_list()

    def item_row(pos: int, weight: float) -> dict:
        it = int(hist[pos])
        return {"position": pos + offset, "item": raw[it], "title": titles[it], "weight": weight}

    ids, lengths = pad([hist], model.cfg.max_len)
    u, ex = model.users(z[ids.to(device)], lengths.to(device))
    cfg = model.cfg
    out: dict = {
        "user": seqs.raw_ids[index],
        "role": str(seqs.roles[index]),
        "history_length": len(full),
        "read": len(hist),
        "attention": cfg.attention,
        "objective": cfg.objective,
        "branches": list(model.branches),
        "valid": manifest.get("valid"),
    }
    if ex.gates is not None:
        out["gates"] = dict(zip(model.branches, ex.gates[0, 0].tolist(), strict=True))
    layer = model.layers[0]
    slopes = {"window": layer.window_recency, "block": layer.block_recency}  # cfg.recency
    if any(s is not None for s in slopes.values()):
        out["recency"] = {name: s.tolist() for name, s in slopes.items() if s is not None}
    if ex.window_weights is not None:
        pos, w = ex.window_positions[0, 0].tolist(), ex.window_weights[0, 0].tolist()
        out["window"] = [item_row(p, wt) for p, wt in zip(pos, w, strict=True) if p >= 0 and wt > 0]
    if ex.block_weights is not None:
        a = ex.block_weights[0, 0]
        selected = set()
        if ex.selected_blocks is not None:
            selected = {int(j) for j, ok in zip(ex.selected_blocks[0, 0], ex.selected_valid[0, 0], strict=True) if ok}
        b = cfg.block_size
        blocks = []
        for j in torch.argsort(a, descending=True, stable=True).tolist():
            if a[j] <= 0:
                continue
            span = range(j * b, min((j + 1) * b, len(hist)))
            blocks.append(
                {
                    "block": j,
                    "positions": [span[0] + offset, span[-1] + offset],
                    "weight": float(a[j]),
                    "selected": j in selected,
                    "titles": [titles[int(hist[p])] for p in span],
                }
            )
        out["blocks"] = blocks
    if ex.selective_weights is not None:
        w = ex.selective_weights[0, 0]
        pos = ex.selective_positions[0, 0]
        order = [i for i in torch.argsort(w, descending=True, stable=True).tolist() if w[i] > 0][:top]
        out["selective"] = [item_row(int(pos[i]), float(w[i])) for i in order]
    scores = model.items(z) @ u[0]
    scores[torch.as_tensor(np.unique(full), device=device)] = -torch.inf
    best = torch.topk(scores, min(top, int(torch.isfinite(scores).sum()))).indices.tolist()
    out["recommendations"] = [{"item": raw[i], "title": titles[i], "score": float(scores[i])} for i in best]
    return out
