"""align-train and embed end to end on tiny synthetic: both objectives, finetuning, negatives,
resume, external users, --explain, bad input."""

import shutil

import numpy as np
import polars as pl
import pytest
import torch

from mufasa_cli import artifacts
from mufasa_cli import losses as loss
from mufasa_cli.data import sequences
from mufasa_cli.sal import aligner, embed, fast, files
from mufasa_cli.sal import batches as sal_batches
from mufasa_cli.sal.config import SALConfig
from mufasa_cli.sal.model import SALEncoder
from tests.conftest import PAPER, folder_digest, invoke


@pytest.fixture(scope="module")
def fused(fused_tiny):
    return fused_tiny


@pytest.fixture(scope="module")
def aligned(fused, tmp_path_factory):
    run = tmp_path_factory.mktemp("align") / "run"
    shutil.copytree(fused, run)
    result = invoke("align-train", run, "--recipe", PAPER, "--epochs", "3")  # the paper's model
    assert result.exit_code == 0, result.output
    assert invoke("embed", run).exit_code == 0
    return run, result


def _copy(fused, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(fused, run)
    return run


def test_align_train_without_a_recipe_trains_the_general_configuration(fused, tmp_path):
    run = _copy(fused, tmp_path)
    result = invoke("align-train", run, "--epochs", "1")
    assert result.exit_code == 0, result.output
    m = artifacts.verify_stage(run / "align")
    config = m["config"]
    assert m["objective"] == "all" and config["sal"]["objective"] == "all" and config["sal"]["dropout"] == 0.3
    assert config["item_ids"] and config["full_softmax"] and (run / "align/item_ids.safetensors").is_file()
    assert invoke("embed", run).exit_code == 0


def test_align_train_writes_weights_and_validation_metrics(aligned):
    run, result = aligned
    m = artifacts.verify_stage(run / "align")
    assert 0.0 <= m["valid"]["NDCG@10"] <= m["valid"]["HR@10"] <= 1.0
    assert m["inputs"]["fuse"]["manifest_sha256"] == artifacts.sha256_file(run / "fuse/manifest.json")
    assert m["objective"] == "last" and m["tau"] == pytest.approx(0.07)
    assert m["kernel"] == "fast" and "(fast kernel)" in " ".join(result.stdout.split())  # auto picks the fast path
    assert "valid HR@10" in result.stdout and not (run / ".align.ckpt").exists()


def test_embed_covers_train_and_zero_shot_users_and_every_item(aligned):
    run, _ = aligned
    users = pl.read_parquet(run / "data/users.parquet")
    items = pl.read_parquet(run / "data/items.parquet")
    u = artifacts.load_tensors(
        run / "embed/users.safetensors", {"user": ("int64", ("U",)), "emb": ("float32", ("U", 64))}
    )
    e = artifacts.load_tensors(run / "embed/items.safetensors", {"emb": ("float32", (items.height, 64))})
    assert sorted(u["user"].tolist()) == users["user"].to_list()
    assert np.isfinite(u["emb"]).all() and np.isfinite(e["emb"]).all()
    m = artifacts.read_manifest(run / "embed")
    assert m["counts"]["zero_shot_users"] == (users["role"] == "zero_shot").sum()
    assert m["config"]["kernel"] == "fast"


def test_embed_with_the_reference_kernel_gives_the_same_embeddings(aligned, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(aligned[0], run)
    result = invoke("embed", run, "--kernel", "reference", "--force")
    assert result.exit_code == 0 and "reference kernel" in " ".join(result.stdout.split())
    assert artifacts.read_manifest(run / "embed")["config"]["kernel"] == "reference"
    spec = {"user": ("int64", ("U",)), "emb": ("float32", ("U", 64))}
    ref = artifacts.load_tensors(run / "embed/users.safetensors", spec)
    fast = artifacts.load_tensors(aligned[0] / "embed/users.safetensors", spec)
    assert np.array_equal(ref["user"], fast["user"])
    np.testing.assert_allclose(ref["emb"], fast["emb"], atol=1e-5)


@pytest.mark.parametrize(
    "flags",
    [
        ("--attention", "full"),
        ("--attention", "mean"),
        ("--without", "selective"),
        ("--objective", "all", "--without", "window"),
        ("--objective", "all", "--attention", "full"),
    ],
)
def test_variants_train(fused, flags, tmp_path):
    run = _copy(fused, tmp_path)
    result = invoke("align-train", run, "--epochs", "1", *flags)
    assert result.exit_code == 0, result.output
    sal = artifacts.read_manifest(run / "align")["config"]["sal"]
    assert sal["attention"] == (flags[flags.index("--attention") + 1] if "--attention" in flags else "sparse")


def test_objective_all_trains_a_causal_model_and_embeds(fused, tmp_path):
    run = _copy(fused, tmp_path)
    result = invoke("align-train", run, "--objective", "all", "--epochs", "2")
    assert result.exit_code == 0, result.output
    assert "objective all" in result.stdout
    m = artifacts.read_manifest(run / "align")
    assert m["objective"] == "all" and m["epochs_run"] == 2 and m["config"]["train_all"]["epochs"] == 2
    model, _ = files.load_sal(run, torch.device("cpu"))
    assert model.causal
    assert invoke("embed", run).exit_code == 0


def test_query_block_selection_trains_with_either_kernel_to_the_same_weights(fused, tmp_path):
    weights = []
    for kernel in ("fast", "reference"):
        run = _copy(fused, tmp_path / kernel)
        flags = ("--objective", "all", "--selection", "query_block", "--epochs", "1", "--kernel", kernel)
        result = invoke("align-train", run, *flags)
        assert result.exit_code == 0, result.output
        m = artifacts.read_manifest(run / "align")
        assert m["kernel"] == kernel and m["config"]["sal"]["selection"] == "query_block"
        weights.append(artifacts.load_tensors(run / "align/sal.safetensors", {}))
    for name in weights[0]:
        np.testing.assert_allclose(weights[0][name], weights[1][name], atol=1e-4, err_msg=name)


def test_finetune_mfl_trains_z_and_embed_reads_the_new_z(fused, tmp_path):
    run = _copy(fused, tmp_path)
    result = invoke("align-train", run, "--finetune-mfl", "--epochs", "2")
    assert result.exit_code == 0, result.output
    old = artifacts.load_tensors(run / "fuse/fused.safetensors", {})["z"]
    new = artifacts.load_tensors(run / "align/fused.safetensors", {})["z"]
    assert new.shape == old.shape and not np.allclose(new, old)
    assert (run / "align/mfl.safetensors").is_file()
    assert invoke("embed", run).exit_code == 0
    model, _ = files.load_sal(run, torch.device("cpu"))
    items = artifacts.load_tensors(run / "embed/items.safetensors", {})["emb"]
    with torch.no_grad():
        np.testing.assert_allclose(items, model.items(torch.as_tensor(new)).numpy(), rtol=1e-5, atol=1e-6)
    # a later frozen run (without id vectors) starts again from fuse/'s z and drops the finetuned one
    assert invoke("align-train", run, "--epochs", "1", "--no-item-ids", "--force").exit_code == 0
    assert not (run / "align/fused.safetensors").exists()


def test_item_ids_add_trained_vectors_to_z_for_trained_items_only(fused, tmp_path):
    run = _copy(fused, tmp_path)
    result = invoke("align-train", run, "--item-ids", "--epochs", "2")
    assert result.exit_code == 0, result.output
    ids = artifacts.load_tensors(run / "align/item_ids.safetensors", {})
    inter = pl.read_parquet(run / "data/interactions.parquet")
    users = pl.read_parquet(run / "data/users.parquet").filter(pl.col("role") == "train")["user"]
    trained = inter.filter(pl.col("user").is_in(users.implode()) & (pl.col("split") == "train"))["item"].unique()
    expect = np.zeros(len(ids["has_id"]), dtype=bool)
    expect[trained.to_numpy()] = True
    np.testing.assert_array_equal(ids["has_id"], expect)
    assert not ids["emb"][~expect].any() and np.abs(ids["emb"][expect]).sum() > 0  # trained rows moved, cold stay 0
    # frozen MFL: the SAL's z is fuse/'s z plus the id vectors, and embed reads that sum
    old = artifacts.load_tensors(run / "fuse/fused.safetensors", {})["z"]
    new = artifacts.load_tensors(run / "align/fused.safetensors", {})["z"]
    np.testing.assert_allclose(new, old + ids["emb"], rtol=1e-6, atol=1e-6)
    assert not (run / "align/mfl.safetensors").exists()
    assert invoke("embed", run).exit_code == 0
    model, _ = files.load_sal(run, torch.device("cpu"))
    items = artifacts.load_tensors(run / "embed/items.safetensors", {})["emb"]
    with torch.no_grad():
        np.testing.assert_allclose(items, model.items(torch.as_tensor(new)).numpy(), rtol=1e-5, atol=1e-6)
    # the tables count the SAL's weights plus one vector per trained item
    from mufasa_cli.eval import run as eval_run
    from mufasa_cli.eval.protocols import build_cases

    sal = sum(v.size for v in artifacts.load_tensors(run / "align/sal.safetensors", {}).values())
    mfl = sum(v.size for v in artifacts.load_tensors(run / "fuse/mfl.safetensors", {}).values())
    params = eval_run.mufasa_vectors(run, build_cases(run / "data", "loo")).params
    assert params == sal + mfl + int(expect.sum()) * new.shape[1]


def test_id_dropout_scores_a_share_of_the_steps_items_from_z_alone_while_training_only():
    from mufasa_cli.config import AlignConfig

    N, d = 4000, 8
    cfg = AlignConfig(sal=SALConfig(d_model=8), item_ids=True, id_dropout=0.25)
    has = torch.ones(N, dtype=torch.bool)
    has[:10] = False  # cold items: no vector to keep or drop
    model = aligner.Aligner(SALEncoder(d, cfg.sal), cfg, torch.zeros(N, d), torch.zeros(N), ids_for=has)
    with torch.no_grad():
        model.ids.fill_(1.0)
    items = torch.arange(N)
    torch.manual_seed(0)
    kept = model.with_ids(torch.zeros(N, d), items)[:, 0]  # 1 where the vector stayed, else 0
    assert set(kept.unique().tolist()) == {0.0, 1.0}
    assert not kept[:10].any()
    assert abs(1 - kept[10:].mean().item() - 0.25) < 0.03  # about a quarter dropped
    rows = model.with_ids(torch.zeros(N, d), items)
    assert (rows == rows[:, :1]).all()  # a whole vector kept or dropped, never part of one
    model.eval()  # inference: every trained item keeps its vector
    np.testing.assert_array_equal(model.with_ids(torch.zeros(N, d), items)[:, 0].detach().numpy(), has.float().numpy())


def test_length_groups_pad_each_group_to_its_own_longest():
    """Hand-checked: lengths 20..100 and 400 with a call worth 64 rows. Groups {20-50},
    {60-100}, {400} pad 4 * 50 + 3 * 100 + 400 = 900 rows + 3 calls = 1092, against 8 * 400 + 64
    = 3264 for one call; every user once."""
    lengths = [60, 20, 400, 30, 100, 40, 80, 50]
    groups = aligner.length_groups(lengths)
    assert [sorted(lengths[i] for i in g) for g in groups] == [[20, 30, 40, 50], [60, 80, 100], [400]]
    assert sorted(i for g in groups for i in g) == list(range(8))
    assert aligner.length_groups([5, 3]) == [[1, 0]]  # close lengths: one call
    assert aligner.length_groups([7]) == [[0]]
    assert aligner.length_groups([1, 200], call=0) == [[0], [1]]


@pytest.mark.parametrize("objective", ["last", "all"])
def test_grouped_encoding_gives_the_loss_and_gradients_of_one_padded_call(objective):
    """Aligner encodes users in length groups, each padded to its own longest: the same loss
    and gradients as one call over the batch padded to its longest (eval mode: no dropout)."""
    from mufasa_cli.config import AlignConfig

    N, d = 40, 8
    sal_cfg = SALConfig(d_model=8, num_heads=2, block_size=2, num_selected=2, objective=objective, max_len=64)
    cfg = AlignConfig(sal=sal_cfg, full_softmax=True)
    torch.manual_seed(0)
    model = aligner.Aligner(SALEncoder(d, sal_cfg, "fast"), cfg, torch.randn(N, d), torch.zeros(N)).to(torch.float64)
    rng = np.random.default_rng(0)
    seqs = [rng.integers(0, N, n) for n in (3, 40, 5, 2, 33, 9)]
    data = sequences.TrainData(seqs, [], np.zeros(0, dtype=np.int64), N)
    make = sal_batches.all_batches if objective == "all" else sal_batches.last_batches
    batch = next(make(data, 6, 64, torch.device("cpu"))(np.random.default_rng(1)))
    assert len(aligner.length_groups(batch[1].tolist())) > 1  # the test covers the grouping
    model.eval()
    results = []
    for grouped in (True, False):
        model.group_lengths = grouped
        model.zero_grad()
        loss, _ = model(batch)
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-10, atol=1e-12)
    for a, b in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_id_dropout_needs_item_ids_and_a_share_below_one(fused, tmp_path):
    run = _copy(fused, tmp_path)
    bad = invoke("align-train", run, "--no-item-ids", "--id-dropout", "0.5")
    assert bad.exit_code == 2 and "id_dropout 0.5 needs item_ids" in bad.stderr
    bad = invoke("align-train", run, "--item-ids", "--id-dropout", "1")
    assert bad.exit_code == 2 and "id_dropout 1.0: must be in [0, 1)" in bad.stderr
    assert not (run / "align").exists()
    result = invoke("align-train", run, "--item-ids", "--id-dropout", "0.5", "--epochs", "1")
    assert result.exit_code == 0, result.output
    assert artifacts.read_manifest(run / "align")["config"]["id_dropout"] == 0.5


def test_uniform_negatives_and_learned_temperature(fused, tmp_path):
    run = _copy(fused, tmp_path)
    result = invoke("align-train", run, "--epochs", "3", "--uniform-negatives", "32", "--learn-tau", "--tau", "0.2")
    assert result.exit_code == 0, result.output
    m = artifacts.read_manifest(run / "align")
    assert m["config"]["uniform_negatives"] == 32 and m["config"]["learn_tau"]
    assert 0.01 <= m["tau"] <= 1.0 and m["tau"] != pytest.approx(0.2)


def test_recency_bias_trains_its_slopes_and_embeds(fused, tmp_path):
    run = _copy(fused, tmp_path)
    result = invoke("align-train", run, "--recency", "--objective", "all", "--epochs", "2")
    assert result.exit_code == 0, result.output
    assert artifacts.read_manifest(run / "align")["config"]["sal"]["recency"]
    model, _ = files.load_sal(run, torch.device("cpu"))
    for slopes in (model.layers[0].window_recency, model.layers[0].block_recency):
        assert slopes.shape == (model.layers[0].cfg.num_heads,) and slopes.abs().sum() > 0  # learned from 0
    assert invoke("embed", run).exit_code == 0
    shown = invoke("embed", run, "--explain", "0")
    assert shown.exit_code == 0 and "recency slopes per head" in shown.stdout
    ex = embed.explain(run, "0", device=torch.device("cpu"))
    assert ex["recency"]["window"] == pytest.approx(model.layers[0].window_recency.tolist())
    assert ex["recency"]["block"] == pytest.approx(model.layers[0].block_recency.tolist())


def test_stacked_layers_with_full_softmax_and_finetuned_mfl_train_and_embed(fused, tmp_path):
    run = _copy(fused, tmp_path)
    flags = ("--objective", "all", "--layers", "2", "--full-softmax", "--finetune-mfl", "--item-ids", "--epochs", "2")
    result = invoke("align-train", run, *flags)
    assert result.exit_code == 0, result.output
    m = artifacts.read_manifest(run / "align")
    assert m["config"]["full_softmax"] and m["config"]["sal"]["layers"] == 2
    model, _ = files.load_sal(run, torch.device("cpu"))
    assert len(model.layers) == 2 and model.norm is not None
    assert invoke("embed", run).exit_code == 0
    bad = invoke("align-train", run, "--layers", "2", "--objective", "last", "--force")
    assert bad.exit_code == 2 and "needs --objective all" in bad.stderr


def test_resume_replays_an_interrupted_run_exactly(fused, tmp_path, monkeypatch):
    whole = _copy(fused, tmp_path / "whole")
    assert invoke("align-train", whole, "--recipe", PAPER, "--epochs", "4").exit_code == 0
    run = _copy(fused, tmp_path / "cut")
    real, calls = loss.sampled_softmax_loss, []

    def crash_on_third_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # tiny: one step per epoch, so epochs 1 and 2 are checkpointed
            raise RuntimeError("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(aligner, "sampled_softmax_loss", crash_on_third_step)
    assert invoke("align-train", run, "--recipe", PAPER, "--epochs", "4").exit_code == 1
    assert (run / ".align.ckpt/sal.pt").is_file() and not (run / "align").exists()
    monkeypatch.setattr(aligner, "sampled_softmax_loss", real)
    result = invoke("align-train", run, "--recipe", PAPER, "--epochs", "4", "--resume")
    assert result.exit_code == 0, result.output
    a = artifacts.load_tensors(whole / "align/sal.safetensors", {})
    b = artifacts.load_tensors(run / "align/sal.safetensors", {})
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_embed_users_file_orders_by_timestamp_and_reports_unknown_items(aligned, tmp_path):
    run, _ = aligned
    raw = pl.read_parquet(run / "data/items.parquet").sort("item")["raw_id"].to_list()
    path = tmp_path / "seqs.parquet"
    pl.DataFrame(
        {
            "user": ["a", "a", "a", "a", "b"],
            "item": [raw[5], "nope-1", raw[9], raw[2], "nope-2"],
            "timestamp": [3.0, 0.0, 2.0, 1.0, 5.0],
        }
    ).write_parquet(path)
    out = tmp_path / "run"
    shutil.copytree(run, out)
    result = invoke("embed", out, "--users", path, "--force")
    assert result.exit_code == 0, result.output
    assert "2 rows name 2 items not in the catalogue" in result.stderr and "1 users have no known item" in result.stderr
    table = pl.read_parquet(out / "embed/external.parquet")
    assert table["user"].to_list() == ["a"] and table["length"].to_list() == [3]
    emb = artifacts.load_tensors(out / "embed/external.safetensors", {})["emb"]
    model, _ = files.load_sal(out, torch.device("cpu"))
    z = torch.as_tensor(files.load_z(out)[0])
    expected = embed.user_embeddings(model, z, [np.array([2, 9, 5])], model.cfg.max_len)
    np.testing.assert_allclose(emb, expected.numpy(), rtol=1e-5, atol=1e-6)
    assert artifacts.read_manifest(out / "embed")["external"]["unknown_examples"] == ["nope-1", "nope-2"]


def test_bad_users_file_names_the_problem_and_keeps_the_old_embeddings(aligned, tmp_path):
    run, _ = aligned
    before = folder_digest(run / "embed")
    path = tmp_path / "seqs.parquet"
    pl.DataFrame({"uid": ["a"], "item": ["x"]}).write_parquet(path)
    result = invoke("embed", run, "--users", path, "--force")
    assert result.exit_code == 2 and f"{path}: missing column 'user'" in result.stderr
    (tmp_path / "text.parquet").write_text("not parquet")
    result = invoke("embed", run, "--users", tmp_path / "text.parquet", "--force")
    assert result.exit_code == 2 and "not a readable parquet file" in result.stderr
    assert "Traceback" not in result.output and folder_digest(run / "embed") == before


def test_explain_prints_blocks_gates_branch_items_and_recommendations(aligned):
    run, _ = aligned
    users = pl.read_parquet(run / "data/users.parquet")
    raw_user = users.filter(pl.col("role") == "train")["raw_id"][0]
    result = invoke("embed", run, "--explain", raw_user)
    assert result.exit_code == 0, result.output
    for text in (
        "gates: window",
        "Interest blocks",
        "selected",
        "Window branch",
        "Selective branch",
        "Top recommendations",
    ):
        assert text in result.stdout, text
    ex = embed.explain(run, raw_user, device=torch.device("cpu"))
    assert sum(b["weight"] for b in ex["blocks"]) == pytest.approx(1.0, abs=1e-5)
    assert sum(b["selected"] for b in ex["blocks"]) == min(4, len(ex["blocks"]))
    assert all(0 < g < 1 for g in ex["gates"].values()) and len(ex["recommendations"]) == 5
    result = invoke("embed", run, "--explain", "no-such-user")
    assert result.exit_code == 2 and "user 'no-such-user' is not in" in result.stderr


def test_stale_fuse_is_refused(tmp_path):
    run = tmp_path / "run"
    assert invoke("prepare", "synthetic", "--preset", "tiny", "--out", run).exit_code == 0
    assert invoke("fuse-train", run, "--epochs", "1", "--cf-epochs", "5").exit_code == 0
    assert invoke("prepare", "synthetic", "--preset", "tiny", "--seed", "3", "--out", run, "--force").exit_code == 0
    result = invoke("align-train", run, "--epochs", "1")
    assert result.exit_code == 2 and "fuse is stale" in result.stderr


def test_bad_flags(aligned):
    run, _ = aligned
    result = invoke("align-train", run, "--force", "--attention", "dense")
    assert result.exit_code == 2 and "--attention 'dense'" in result.stderr
    result = invoke("align-train", run, "--force", "--objective", "next")
    assert result.exit_code == 2 and "--objective 'next'" in result.stderr
    result = invoke("align-train", run, "--force", "--kernel", "triton")
    assert result.exit_code == 2 and "--kernel 'triton'" in result.stderr
    result = invoke("align-train", run, "--force", "--kernel", "flex", "--device", "cpu")
    assert result.exit_code == 2 and "--kernel flex trains on CUDA only" in result.stderr
    result = invoke("align-train", run, "--force", "--objective", "last", "--selection", "query_block")
    assert result.exit_code == 2 and "query_block needs --objective all" in result.stderr
    assert artifacts.verify_stage(run / "align")  # the trained model survives the refusals
    result = invoke("embed", run / "nope")
    assert result.exit_code == 2 and "manifest.json: missing" in result.stderr


@pytest.mark.parametrize("tokens", [1, 40, 1 << 14])
def test_user_embeddings_in_length_batches_equal_one_user_at_a_time(tokens):
    """Users are batched by length under a token budget and returned in the order given."""
    cfg = SALConfig(d_model=16, num_heads=2, max_len=12, block_size=4, num_selected=2)
    torch.manual_seed(0)
    model = SALEncoder(8, cfg).to(torch.float64)
    z = torch.randn(30, 8, dtype=torch.float64)
    rng = np.random.default_rng(0)
    histories = [rng.integers(0, 30, n) for n in (5, 1, 20, 12, 3, 5, 9, 30)]  # 20, 30: cut to max_len
    alone = torch.cat([embed.user_embeddings(model, z, [h], cfg.max_len) for h in histories])
    batched = embed.user_embeddings(model, z, histories, cfg.max_len, tokens=tokens)
    torch.testing.assert_close(batched, alone, rtol=1e-10, atol=1e-12)
    assert embed.user_embeddings(model, z, [], cfg.max_len).shape == (0, 16)


def test_objective_all_batches_query_every_position_and_real_outputs_match_clamped_queries():
    """Training batches of `all` make every position a query (padding too), so the fast
    kernel runs its dense causal path; at the positions that have a target, the outputs equal
    those of queries clamped to each user's last item."""
    seqs = [np.arange(1, 12), np.arange(3, 7), np.array([5, 2])]
    data = sequences.TrainData(seqs, [], np.zeros(0, dtype=np.int64), 20)
    batch = next(sal_batches.all_batches(data, 8, 64, torch.device("cpu"))(np.random.default_rng(0)))
    ids, lengths, qpos, targets = batch
    L = ids.shape[1]
    assert torch.equal(qpos, torch.arange(L).expand(3, L)) and fast.dense_queries(qpos, L)
    cfg = SALConfig(d_model=16, num_heads=2, max_len=64, block_size=2, num_selected=2, objective="all")
    torch.manual_seed(0)
    model = SALEncoder(8, cfg).to(torch.float64)
    model.kernel = "fast"
    z = torch.randn(20, 8, dtype=torch.float64)
    clamped = torch.minimum(qpos, lengths[:, None] - 1)
    real = targets >= 0
    with torch.no_grad():
        dense, _ = model.encode(z[ids], lengths, qpos)
        model.kernel = "reference"
        ref, _ = model.encode(z[ids], lengths, clamped)
    torch.testing.assert_close(dense[real], ref[real], rtol=1e-10, atol=1e-12)
    assert int(real.sum()) == sum(len(s) - 1 for s in seqs)


def test_stride_windows_train_every_target_once_with_their_context():
    """--stride: histories cut into windows of max_len + 1 ending every `stride` items; a
    window's targets before its `first` belong to a later window, so every train item after a
    user's first is a target exactly once. Hand-checked on 1..11 with max_len 4, stride 2:
    windows end at 11, 9, 7, 5 and 3, and train the targets 10-11, 8-9, 6-7, 4-5 and 2-3."""
    windows = sequences.training_windows([np.arange(1, 12)], 4, 2)
    assert [(w.tolist(), f) for w, f in windows] == [
        ([7, 8, 9, 10, 11], 2),
        ([5, 6, 7, 8, 9], 2),
        ([3, 4, 5, 6, 7], 2),
        ([1, 2, 3, 4, 5], 2),
        ([1, 2, 3], 0),
    ]
    data = sequences.TrainData([np.arange(1, 12), np.array([5, 2, 9])], [], np.zeros(0, dtype=np.int64), 20)
    trained = {}
    for ids, lengths, _, targets in sal_batches.all_batches(data, 1, 4, torch.device("cpu"), stride=2)(
        np.random.default_rng(0)
    ):
        window = ids[0, : lengths[0]].tolist()
        trained[tuple(window)] = targets[0][targets[0] >= 0].tolist()
        assert (targets[0, lengths[0] :] == -1).all()  # padding has no target
    assert trained == {
        (7, 8, 9, 10): [10, 11],
        (5, 6, 7, 8): [8, 9],
        (3, 4, 5, 6): [6, 7],
        (1, 2, 3, 4): [4, 5],
        (1, 2): [2, 3],
        (5, 2): [2, 9],
    }
    # the schedule's horizon counts windows, not users: 6 windows of 2 users, 2 a step -> 3 steps
    epoch = sal_batches.all_batches(data, 2, 4, torch.device("cpu"), stride=2)
    assert epoch.units == 6 and len(list(epoch(np.random.default_rng(0)))) == 3
    assert sal_batches.all_batches(data, 2, 4, torch.device("cpu")).units == 2  # no stride: one unit a user


def test_stride_applies_to_objective_all_and_is_capped_at_max_len():
    from mufasa_cli.config import AlignConfig
    from mufasa_cli.errors import RecipeError

    with pytest.raises(RecipeError, match="stride -1: must be >= 0"):
        AlignConfig(stride=-1)
    assert AlignConfig(sal=SALConfig(objective="last"), stride=5).window_stride == 0  # one query a user: no windows
    assert AlignConfig(sal=SALConfig(objective="all", max_len=50), stride=80).window_stride == 50  # end to end
    assert AlignConfig(sal=SALConfig(objective="all", max_len=50), stride=20).window_stride == 20
    assert AlignConfig().window_stride == 100 and AlignConfig().sal.max_len == 200  # the built-in default


def test_user_batches_without_a_pool_are_the_shuffled_order_cut_in_batches():
    lengths = np.array([3, 9, 1, 4, 7])
    batches = sal_batches.user_batches(np.random.default_rng(5), lengths, 2, pool=0)
    order = np.random.default_rng(5).permutation(5)
    assert [b.tolist() for b in batches] == [order[:2].tolist(), order[2:4].tolist(), order[4:].tolist()]


def test_length_pool_batches_users_of_similar_length():
    """Pools of pool * bs shuffled users, each sorted by length and cut into as many batches
    as bs users each would give: every user once, and far less padding. Without targets
    every batch has bs users (the last pool's last fewer)."""
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 200, 1000)
    plain = sal_batches.user_batches(np.random.default_rng(1), lengths, 16, pool=0)
    pooled = sal_batches.user_batches(np.random.default_rng(1), lengths, 16, pool=10)
    assert sorted(np.concatenate(pooled).tolist()) == list(range(1000))
    assert sorted(len(b) for b in pooled) == sorted(len(b) for b in plain) == [8] + [16] * 62
    padded = lambda batches: sum(len(b) * lengths[b].max() for b in batches)  # noqa: E731
    assert padded(pooled) < 0.7 * padded(plain)
    # within a pool of 160 users, the batches are consecutive runs of the sorted lengths
    order = np.random.default_rng(1).permutation(1000)
    first_pool = order[:160][np.argsort(lengths[order[:160]], kind="stable")]
    assert any(b.tolist() == first_pool[:16].tolist() for b in pooled)


def test_length_pool_with_targets_balances_the_targets_of_each_batch():
    """Objective all: a pool's batches hold about equal numbers of targets, so short
    histories come many to a batch and long ones few; hand-checked on one pool."""
    lengths = np.array([1, 1, 1, 1, 1, 1, 2, 2, 6, 8])  # 24 targets, 10 users: 3 batches of 4 users a pool
    batches = sal_batches.user_batches(np.random.default_rng(0), lengths, 4, pool=3, targets=lengths)
    # sorted 1 1 1 1 1 1 2 2 6 8, running totals 1..6, 8, 10, 16, 24: cuts after totals 8 and 16
    assert sorted(sorted(lengths[b].tolist()) for b in batches) == [[1, 1, 1, 1, 1, 1, 2], [2, 6], [8]]
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 200, 1000)
    pooled = sal_batches.user_batches(np.random.default_rng(1), lengths, 16, pool=10, targets=lengths)
    assert sorted(np.concatenate(pooled).tolist()) == list(range(1000)) and len(pooled) == 63
    share = np.array([lengths[b].sum() for b in pooled[:-1]])
    assert share.max() < 2 * np.median(share)  # about equal, unlike users of length 1 vs 199


def test_length_pool_trains_and_is_recorded(fused, tmp_path):
    run = _copy(fused, tmp_path)
    result = invoke("align-train", run, "--objective", "all", "--epochs", "1", "--length-pool", "4")
    assert result.exit_code == 0, result.output
    assert artifacts.read_manifest(run / "align")["config"]["length_pool"] == 4
    result = invoke("align-train", run, "--force", "--length-pool", "-1")
    assert result.exit_code == 2 and "length_pool must be >= 0" in result.stderr
    assert artifacts.read_manifest(run / "align")["config"]["length_pool"] == 4  # the trained model survives
