"""`eval --plot`: metric@k curves per model as a PNG (matplotlib, the optional extra `plot`)."""

from __future__ import annotations

from pathlib import Path

from mufasa_cli import artifacts
from mufasa_cli.errors import DependencyError, MufasaError
from mufasa_cli.eval import DISPLAY_NAMES


def check_plot(path: Path) -> None:
    """Refuse a --plot target before any work: a .png name, matplotlib installed."""
    if path.suffix.lower() != ".png":
        raise MufasaError(f"--plot {path}: the file name must end in .png")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise DependencyError("--plot needs matplotlib: pip install 'mufasa-cli[plot]'") from None


def plot_curves(result: dict, path: Path) -> Path:
    """Two panels, hit metric (HR@k or Recall@k) and NDCG@k against k, one line per model;
    written atomically."""
    check_plot(path)
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    ks = result["ks"]
    hit = "Recall" if any(m.startswith("Recall@") for m in result["metrics"]) else "HR"
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for name, m in result["models"].items():
        for ax, metric in zip(axes, (hit, "NDCG"), strict=True):
            ax.plot(ks, [m["mean"][f"{metric}@{k}"] for k in ks], marker="o", label=DISPLAY_NAMES.get(name, name))
    for ax, metric in zip(axes, (hit, "NDCG"), strict=True):
        ax.set_xscale("log")
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.set_xlabel("k")
        ax.set_ylabel(f"{metric}@k")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"{result['protocol']}: {result['cases']:,} users")
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    artifacts.atomic_write_bytes(path, buf.getvalue())
    return path
