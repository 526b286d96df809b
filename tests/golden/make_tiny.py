"""Write tests/golden/tiny.npz: the outputs of a tiny synthetic run (prepare, fuse-train,
align-train with objective last and objective all, embed) on one thread, by the code of the
day. tests/test_golden.py trains the same run again and compares: a refactor that changes
no behaviour leaves them equal.

    python tests/golden/make_tiny.py     # only when a change is meant to alter the numbers
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

GOLDEN = Path(__file__).with_name("tiny.npz")


def tiny_outputs(root: Path) -> dict[str, np.ndarray]:
    """Run the stages on one thread and return the arrays to compare."""
    import torch
    from safetensors.numpy import load_file

    from tests.conftest import PAPER, invoke

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out: dict[str, np.ndarray] = {}
        run = root / "run"
        for args in (
            ("prepare", "synthetic", "--preset", "tiny", "--out", run),
            ("fuse-train", run, "--epochs", "2", "--cf-epochs", "5"),
            ("align-train", run, "--recipe", PAPER, "--epochs", "3"),  # the paper's model
            ("embed", run),
        ):
            result = invoke(*args)
            assert result.exit_code == 0, result.output
        out["fuse.z"] = load_file(run / "fuse" / "fused.safetensors")["z"]
        out["fuse.cf"] = load_file(run / "fuse" / "cf.safetensors")["item_cf"]
        out["embed.last.users"] = load_file(run / "embed" / "users.safetensors")["emb"]
        out["embed.last.items"] = load_file(run / "embed" / "items.safetensors")["emb"]
        for args in (
            (
                "align-train",
                run,
                "--objective",
                "all",
                "--epochs",
                "2",
                "--item-ids",
                "--full-softmax",
                "--dropout",
                "0",
                "--max-len",
                "1024",
                "--stride",
                "0",
                "--force",
            ),
            ("embed", run, "--force"),
        ):
            result = invoke(*args)
            assert result.exit_code == 0, result.output
        out["align.all.ids"] = load_file(run / "align" / "item_ids.safetensors")["emb"]
        out["embed.all.users"] = load_file(run / "embed" / "users.safetensors")["emb"]
        out["embed.all.items"] = load_file(run / "embed" / "items.safetensors")["emb"]
        return out
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        arrays = tiny_outputs(Path(tmp))
    np.savez_compressed(GOLDEN, **arrays)
    print(f"wrote {GOLDEN} ({GOLDEN.stat().st_size:,} bytes, {len(arrays)} arrays)")
