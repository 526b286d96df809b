"""`mufasa eval` end to end on tiny synthetic, the protocols' cases, and the table's marks."""

import json

import numpy as np
import polars as pl
import pytest

from mufasa_cli import artifacts
from mufasa_cli.eval import tables
from mufasa_cli.eval.protocols import build_cases
from tests.conftest import folder_digest, invoke


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    run = tmp_path_factory.mktemp("eval") / "run"
    assert invoke("prepare", "synthetic", "--preset", "tiny", "--out", run, "--cold-items", "0.05").exit_code == 0
    assert invoke("fuse-train", run, "--epochs", "1", "--cf-epochs", "3").exit_code == 0
    assert invoke("align-train", run, "--epochs", "2").exit_code == 0
    assert invoke("embed", run).exit_code == 0
    return run


def test_cases_follow_the_protocols(embedded):
    inter = pl.read_parquet(embedded / "data/interactions.parquet")
    users = pl.read_parquet(embedded / "data/users.parquet")
    loo = build_cases(embedded / "data", "loo")
    zs = build_cases(embedded / "data", "zero-shot")
    assert (
        len(loo)
        == len(loo.pair_target)
        == inter.filter(pl.col("split") == "test").join(users.filter(pl.col("role") == "train"), on="user").height
    )
    assert len(zs) == (users["role"] == "zero_shot").sum() and len(zs.pair_target) == 3 * len(zs)
    u = int(loo.users[0])
    mine = inter.filter(pl.col("user") == u).sort("pos")
    assert loo.histories[0].tolist() == mine.filter(pl.col("split") != "test")["item"].to_list()
    assert loo.pair_target[0] == mine.filter(pl.col("split") == "test")["item"][0]
    cold = build_cases(embedded / "data", "cold-start")
    items = pl.read_parquet(embedded / "data/items.parquet").sort("item")
    assert len(cold) and items["is_cold"].to_numpy()[cold.pair_target].all()


def test_eval_loo_prints_table_2_and_writes_per_user_metrics(embedded):
    result = invoke("eval", embedded, "--compare", "lightgcn")
    assert result.exit_code == 0, result.output
    for text in ("MUFASA-", "LightGCN-", "HR@10", "NDCG@20", "paired t-test"):
        assert text in result.stdout
    m = json.loads((embedded / "eval/loo/metrics.json").read_text())
    assert set(m["models"]) == {"mufasa", "lightgcn"} and m["strongest_baseline"] == "lightgcn"
    per_user = np.array(m["per_user"]["mufasa"]["NDCG@10"])
    assert len(per_user) == m["cases"] and per_user.mean() == pytest.approx(m["models"]["mufasa"]["mean"]["NDCG@10"])
    assert 0 <= m["p_values"]["NDCG@10"] <= 1


def test_eval_zero_shot_prints_table_3_without_lightgcn(embedded):
    result = invoke("eval", embedded, "--protocol", "zero-shot", "--format", "csv", "--k", "5,10,100")
    assert result.exit_code == 0, result.output
    header = "model,params,Recall@5,Recall@5 sig,Recall@10,Recall@10 sig,Recall@100,Recall@100 sig,NDCG@10,NDCG@10 sig"
    assert result.stdout.splitlines()[0] == header
    assert "LightGCN not evaluated" not in result.stdout  # csv prints rows only
    assert (embedded / "eval/zero-shot/tables.csv").read_text() == result.stdout  # the file is what stdout shows
    m = json.loads((embedded / "eval/zero-shot/metrics.json").read_text())
    assert list(m["models"]) == ["mufasa"] and "lightgcn" in m["skipped"]


def test_keep_seen_changes_only_the_masking(embedded, tmp_path):
    if not (embedded / "eval/loo").exists():
        assert invoke("eval", embedded, "--compare", "").exit_code == 0
    before = folder_digest(embedded / "eval/loo")
    masked = json.loads((embedded / "eval/loo/metrics.json").read_text())
    result = invoke("eval", embedded, "--keep-seen", "--compare", "", "--force", "--format", "json")
    assert result.exit_code == 0, result.output
    kept = json.loads((embedded / "eval/loo-keep-seen/metrics.json").read_text())  # beside the masked results
    assert kept["keep_seen"] and list(kept["models"]) == ["mufasa"]
    assert folder_digest(embedded / "eval/loo") == before
    # scoring seen items can only push targets down
    assert kept["models"]["mufasa"]["mean"]["MRR"] <= masked["models"]["mufasa"]["mean"]["MRR"] + 1e-12


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--protocol", "lo"), "--protocol 'lo'"),
        (("--compare", "sasrec2"), "--compare 'sasrec2'"),
        (("--k", "5,x"), "--k '5,x'"),
        (("--test", "anova"), "--test 'anova'"),
    ],
)
def test_bad_eval_flags_name_the_value_and_keep_earlier_results(embedded, args, message):
    before = folder_digest(embedded / "eval")
    result = invoke("eval", embedded, "--force", *args)
    assert result.exit_code == 2 and message in result.stderr and "Traceback" not in result.output
    assert folder_digest(embedded / "eval") == before


def test_table_marks_best_bold_second_underlined_and_significance(capsys):
    result = {
        "protocol": "loo",
        "keep_seen": False,
        "ks": [10, 20],
        "cases": 3,
        "pairs": 3,
        "metrics": ["HR@10", "NDCG@10", "HR@20", "NDCG@20", "MRR"],
        "main_metric": "NDCG@10",
        "models": {
            "mufasa": {"params": 300_000, "mean": {"HR@10": 0.5, "NDCG@10": 0.3, "HR@20": 0.6, "NDCG@20": 0.1}},
            "lightgcn": {"params": 500_000, "mean": {"HR@10": 0.4, "NDCG@10": 0.2, "HR@20": 0.7, "NDCG@20": 0.3}},
            "sasrec": {"params": 20_000, "mean": {"HR@10": 0.1, "NDCG@10": 0.1, "HR@20": 0.65, "NDCG@20": 0.2}},
        },
        "skipped": {},
        "strongest_baseline": "lightgcn",
        "test": "ttest",
        "p_values": {"HR@10": 0.01, "NDCG@10": 0.2, "HR@20": 0.001, "NDCG@20": 0.001},
    }
    result["model_order"] = ["mufasa", "lightgcn", "sasrec"]
    t = tables.eval_table(result)
    md = tables.to_markdown(t)
    lines = [line for line in md.splitlines() if line.startswith("| ")]
    assert lines[0] == "| Model | HR@10 | NDCG@10 | HR@20 | NDCG@20 |"
    # HR@10: significantly better and best (*); NDCG@10: best, not significant; HR@20 / NDCG@20:
    # significantly worse than the strongest baseline (†)
    assert lines[1] == "| MUFASA-0.3M | **0.5000*** | **0.3000** | 0.6000† | 0.1000† |"
    assert lines[2] == "| LightGCN-0.5M | <u>0.4000</u> | <u>0.2000</u> | **0.7000** | **0.3000** |"
    assert lines[3] == "| SASRec-0.02M | 0.1000 | 0.1000 | <u>0.6500</u> | <u>0.2000</u> |"
    assert "* / †: MUFASA significantly better / worse (p < 0.05, two-sided paired t-test" in md
    csv_lines = tables.to_csv(t).splitlines()
    assert csv_lines[0] == "model,params,HR@10,HR@10 sig,NDCG@10,NDCG@10 sig,HR@20,HR@20 sig,NDCG@20,NDCG@20 sig"
    assert csv_lines[1] == "MUFASA-0.3M,300000,0.500000,*,0.300000,,0.600000,†,0.100000,†"
    tex = tables.to_latex(t)
    assert r"MUFASA-0.3M & \textbf{0.5000}$^{*}$ & \textbf{0.3000} & 0.6000$^{\dagger}$ & 0.1000$^{\dagger}$ \\" in tex
    assert r"\toprule" in tex and r"\underline{0.4000}" in tex and r"\bottomrule" in tex


def test_compare_sasrec_trains_once_and_caches(embedded, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("baselines:\n  sasrec: {max_len: 10, train: {epochs: 3, batch_size: 16}}\n")
    first = invoke("eval", embedded, "--compare", "sasrec", "--recipe", recipe, "--force")
    assert first.exit_code == 0, first.output
    assert "trained sasrec" in first.stderr and "SASRec-" in first.stdout  # logs on stderr, the table on stdout
    m = artifacts.read_manifest(embedded / "baselines/sasrec")
    assert m["epochs_run"] == 3 and m["config"]["max_len"] == 10
    again = invoke(
        "eval",
        embedded,
        "--compare",
        "sasrec",
        "--recipe",
        recipe,
        "--force",
        "--protocol",
        "zero-shot",
        "--format",
        "csv",
    )
    assert again.exit_code == 0, again.output
    assert "trained sasrec" not in again.output and "SASRec-" in again.stdout  # inductive: zero-shot users too
    # no --recipe: the recipe the run recorded (the one above), so the cache still fits
    same = invoke("eval", embedded, "--compare", "sasrec", "--force")
    assert same.exit_code == 0 and "trained sasrec" not in same.output
    recipe.write_text("baselines:\n  sasrec: {max_len: 12, train: {epochs: 2, batch_size: 16}}\n")
    other = invoke("eval", embedded, "--compare", "sasrec", "--force", "--recipe", recipe)  # another config
    assert other.exit_code == 0 and "trained sasrec" in other.stderr
    assert "replaces the baselines settings" in other.stderr


def test_baselines_trained_side_by_side_match_one_after_another(embedded, tmp_path):
    import shutil

    import torch

    copy = tmp_path / "run"
    shutil.copytree(embedded, copy, ignore=shutil.ignore_patterns("baselines", "eval"))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "baselines:\n  dssm: {train: {epochs: 2, batch_size: 256}}\n"
        "  sasrec: {max_len: 8, train: {epochs: 2, batch_size: 16}}\n"
    )
    args = ["--compare", "dssm,sasrec", "--recipe", recipe, "--format", "json", "--retrain"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # each worker gets 1 thread too: the same arithmetic
    try:
        one = invoke("eval", copy, *args, "--jobs", "1")
        two = invoke("eval", copy, *args, "--jobs", "2", "--force")
    finally:
        torch.set_num_threads(threads)
    assert one.exit_code == 0, one.output
    assert two.exit_code == 0, two.output
    models = [json.loads(r.stdout)["models"] for r in (one, two)]
    assert set(models[1]) == {"mufasa", "dssm", "sasrec"}
    assert models[0] == models[1]
    bad = invoke("eval", copy, "--compare", "dssm", "--jobs", "0")
    assert bad.exit_code == 2 and "--jobs 0" in bad.stderr


def test_compare_dssm_youtube_and_mmgcn_end_to_end(embedded, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "baselines:\n  dssm: {train: {epochs: 2, batch_size: 256}}\n"
        "  youtube: {max_len: 8, train: {epochs: 2, batch_size: 16}}\n"
        "  mmgcn: {train: {epochs: 2, batch_size: 512}}\n"
    )
    names = "dssm,youtube,mmgcn"
    result = invoke("eval", embedded, "--compare", names, "--recipe", recipe, "--force", "--format", "csv")
    assert result.exit_code == 0, result.output
    rows = [line.split(",")[0] for line in result.stdout.splitlines()]
    for label in ("DSSM-", "YouTubeDNN-", "MMGCN-"):
        assert any(r.startswith(label) for r in rows), label
    zs = invoke("eval", embedded, "--compare", names, "--recipe", recipe, "--force", "--protocol", "zero-shot")
    assert zs.exit_code == 0, zs.output
    m = json.loads((embedded / "eval/zero-shot/metrics.json").read_text())
    assert set(m["models"]) == {"mufasa", "youtube"} and {"dssm", "mmgcn"} <= set(m["skipped"])


def test_plot_writes_a_png_and_refuses_other_names(embedded, tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "curves.png"
    result = invoke("eval", embedded, "--compare", "lightgcn", "--force", "--plot", png)
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = invoke("eval", embedded, "--force", "--plot", tmp_path / "curves.jpg")
    assert result.exit_code == 2 and "must end in .png" in result.stderr


def test_global_time_split_runs_the_pipeline_and_says_so(tmp_path):
    # 40 users whose timelines overlap, so that both global cutoffs cut through most of them
    rng = np.random.default_rng(0)
    src = tmp_path / "src"
    src.mkdir()
    rows = [f"u{u},i{int(rng.integers(30))},{10 * k + u % 7}" for u in range(40) for k in range(12)]
    (src / "inter.csv").write_text("u,i,t\n" + "\n".join(rows) + "\n")
    np.savez(src / "img.npz", ids=np.array([f"i{k}" for k in range(30)]), emb=rng.normal(size=(30, 8)))
    (src / "schema.yaml").write_text(
        "interactions: {path: inter.csv, user: u, item: i, timestamp: t}\nfeatures: {image: img.npz}\n"
    )
    run = tmp_path / "run"
    steps = [
        ("prepare", "custom", "--source", src, "--out", run, "--text-encoder", "none", "--split", "global-time"),
        ("fuse-train", run, "--epochs", "1", "--cf-epochs", "2"),
        ("align-train", run, "--epochs", "1"),
        ("embed", run),
    ]
    for args in steps:
        assert invoke(*args).exit_code == 0, args
    inter = pl.read_parquet(run / "data/interactions.parquet")
    cut_valid, cut_test = artifacts.read_manifest(run / "data")["counts"]["global_time_cutoffs"]
    assert inter.filter(pl.col("split") == "train")["timestamp"].max() < cut_valid
    assert inter.filter(pl.col("split") == "test")["timestamp"].min() >= cut_test
    result = invoke("eval", run, "--compare", "lightgcn", "--format", "md")
    assert result.exit_code == 0, result.output
    assert "loo, global-time split:" in result.stdout
    assert json.loads((run / "eval/loo/metrics.json").read_text())["split"] == "global-time"


def test_eval_resume_continues_an_interrupted_baseline(embedded, tmp_path, monkeypatch):
    import shutil

    from mufasa_cli.runtime import stage

    recipe = tmp_path / "r.yaml"
    recipe.write_text("baselines:\n  mmgcn: {train: {epochs: 4, eval_every: 1, patience: 9}}\n")
    runs = {}
    for name in ("whole", "cut"):
        runs[name] = tmp_path / name
        shutil.copytree(embedded, runs[name], symlinks=True)
        shutil.rmtree(runs[name] / "baselines", ignore_errors=True)
    args = ("--compare", "mmgcn", "--recipe", recipe, "--force")
    assert invoke("eval", runs["whole"], *args).exit_code == 0
    real_fit, calls = stage.fit, []

    def fit_that_dies_on_the_third_step(**kw):
        real_step = kw["step_loss"]

        def step(batch):
            calls.append(1)
            if len(calls) == 3:  # tiny: one step per epoch, so epochs 1 and 2 are checkpointed
                raise RuntimeError("killed")
            return real_step(batch)

        return real_fit(**{**kw, "step_loss": step})

    monkeypatch.setattr(stage, "fit", fit_that_dies_on_the_third_step)
    assert invoke("eval", runs["cut"], *args).exit_code == 1
    assert (runs["cut"] / "baselines/.mmgcn.ckpt/model.pt").is_file()
    monkeypatch.setattr(stage, "fit", real_fit)
    resumed = invoke("eval", runs["cut"], *args, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert artifacts.read_manifest(runs["cut"] / "baselines/mmgcn")["resumed_after_epoch"] == 2
    whole = artifacts.load_tensors(runs["whole"] / "baselines/mmgcn/model.safetensors", {})
    cut = artifacts.load_tensors(runs["cut"] / "baselines/mmgcn/model.safetensors", {})
    # the same to float rounding: threaded sparse sums may add in another order
    assert whole.keys() == cut.keys()
    for k in whole:
        np.testing.assert_allclose(cut[k], whole[k], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("keep_seen", [False, True])
def test_sasrec_validation_masks_train_items_unless_valid_keep_seen(embedded, tmp_path, monkeypatch, keep_seen):
    import shutil

    from mufasa_cli.baselines import sasrec

    run = tmp_path / "run"
    shutil.copytree(embedded, run, symlinks=True)
    shutil.rmtree(run / "baselines", ignore_errors=True)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"baselines:\n  sasrec: {{max_len: 10, valid_keep_seen: {str(keep_seen).lower()}, train: {{epochs: 1}}}}\n"
    )
    real, excluded = sasrec.target_ranks, []

    def spy(scores, items, owner, target, *exclude, **kw):
        excluded.append(len(exclude))
        return real(scores, items, owner, target, *exclude, **kw)

    monkeypatch.setattr(sasrec, "target_ranks", spy)
    assert invoke("eval", run, "--compare", "sasrec", "--recipe", recipe, "--force").exit_code == 0
    assert excluded and set(excluded) == ({0} if keep_seen else {2})  # (indptr, indices) of the train items
    assert artifacts.read_manifest(run / "baselines/sasrec")["config"]["valid_keep_seen"] is keep_seen
