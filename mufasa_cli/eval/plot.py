"""`eval --plot`: metric@k curves per model as a PNG (matplotlib, the optional extra `plot`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mufasa_cli import artifacts
from mufasa_cli.errors import DependencyError, MufasaError
from mufasa_cli.eval import DISPLAY_NAMES
from mufasa_cli.eval.tables import model_names


def check_plot(path: Path) -> None:
    """Refuse a --plot target before any work: a .png name, matplotlib installed."""
    if path.suffix.lower() != ".png":
        raise MufasaError(f"--plot {path}: the file name must end in .png")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise DependencyError("--plot needs matplotlib: pip install 'mufasa-cli[plot]'") from None


# One colour and marker per model in every plot (matplotlib's tab10 colours).
STYLE = {
    "mufasa": ("#d62728", "o"),
    "sasrec": ("#1f77b4", "s"),
    "dssm": ("#2ca02c", "^"),
    "youtube": ("#ff7f0e", "D"),
    "lightgcn": ("#9467bd", "v"),
    "mmgcn": ("#8c564b", "P"),
}
BOOTSTRAP = 500  # resamples of the users for the 95% bands


def bootstrap_band(values: np.ndarray, rng: np.random.Generator) -> tuple[float, float]:
    """The 95% percentile interval of the mean of `values` over BOOTSTRAP resamples."""
    if len(values) < 2:
        return float(values.mean()), float(values.mean())
    idx = rng.integers(0, len(values), size=(BOOTSTRAP, len(values)))
    means = values[idx].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


def plot_curves(result: dict, path: Path) -> Path:
    """Two panels, hit metric (HR@k or Recall@k) and NDCG@k against k, one line per model with
    its bootstrap 95% band over users (seeded: the same result draws the same plot); the legend
    sits outside the axes. Written atomically."""
    check_plot(path)
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    ks = result["ks"]
    hit = "Recall" if any(m.startswith("Recall@") for m in result["metrics"]) else "HR"
    per_user = result.get("per_user", {})
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
    for n, name in enumerate(model_names(result)):
        m = result["models"][name]
        colour, marker = STYLE.get(name, (f"C{n}", "x"))
        for ax, metric in zip(axes, (hit, "NDCG"), strict=True):
            means = [m["mean"][f"{metric}@{k}"] for k in ks]
            ax.plot(ks, means, marker=marker, color=colour, label=DISPLAY_NAMES.get(name, name))
            if name in per_user:
                rng = np.random.default_rng(0)
                bands = [bootstrap_band(np.asarray(per_user[name][f"{metric}@{k}"]), rng) for k in ks]
                ax.fill_between(ks, [b[0] for b in bands], [b[1] for b in bands], color=colour, alpha=0.15, lw=0)
    for ax, metric in zip(axes, (hit, "NDCG"), strict=True):
        ax.set_xscale("log")
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.set_xlabel("k")
        ax.set_ylabel(f"{metric}@k")
        ax.grid(alpha=0.3)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside right center", title="bands: 95% bootstrap")
    fig.suptitle(f"{result['protocol']}: {result['cases']:,} users")
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, metadata={"Software": None})
    plt.close(fig)
    artifacts.atomic_write_bytes(path, buf.getvalue())
    return path
