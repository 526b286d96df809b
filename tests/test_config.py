from pathlib import Path

import pytest

from mufasa_cli.config import Recipe, load_recipe
from mufasa_cli.errors import RecipeError


def test_recipe_overrides_nested_fields_and_keeps_other_defaults(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text(
        "fuse:\n  mfl: {tau: 0.2, loss_weights: [1, 0, 0, 0], train: {epochs: 3}}\n  cf: {train: {epochs: 7}}\n"
    )
    r = load_recipe(str(p))
    assert r.fuse.mfl.tau == 0.2 and r.fuse.mfl.loss_weights == (1.0, 0.0, 0.0, 0.0)
    assert r.fuse.mfl.train.epochs == 3 and r.fuse.mfl.train.lr == Recipe().fuse.mfl.train.lr
    assert r.fuse.cf.train.epochs == 7 and r.fuse.cf.train.batch_size == Recipe().fuse.cf.train.batch_size


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("fuse: {mfl: {tua: 1}}", "fuse.mfl: unknown key 'tua'"),
        ("fuse: {mfl: {tau: abc}}", "fuse.mfl.tau: expected float"),
        ("fuse: {mfl: {loss_weights: [1, 2]}}", "expected 4 values"),
        ("fuse: {mfl: {train: {epochs: 2.5}}}", "fuse.mfl.train.epochs: expected int"),
        ("fuse: {mfl: {without: [xyz]}}", "--without 'xyz'"),
        ("fuse: [1, 2]", "fuse: expected a mapping"),
        ("fuse: {mfl: {d_model: 30, num_heads: 4}}", "divisible"),
    ],
)
def test_recipe_rejects_bad_input(tmp_path, text, message):
    p = tmp_path / "r.yaml"
    p.write_text(text)
    with pytest.raises(RecipeError, match=message.replace("[", r"\[").replace("(", r"\(")):
        load_recipe(str(p))


def test_the_shipped_recipes_load():
    from pathlib import Path

    recipes = sorted((Path(__file__).parents[1] / "recipes").glob("*.yaml"))
    assert recipes
    for r in recipes:
        load_recipe(str(r))


def test_saved_settings_match_over_the_defaults():
    from dataclasses import asdict

    from mufasa_cli.config import SASRecConfig, saved_as

    want = SASRecConfig(max_len=20)
    saved = asdict(want)
    assert saved_as(want, saved, "m")
    del saved["valid_keep_seen"]  # written before the setting existed: it counts at its default
    assert saved_as(want, saved, "m")
    assert not saved_as(SASRecConfig(max_len=20, valid_keep_seen=True), saved, "m")
    assert not saved_as(want, {**saved, "retired_setting": 1}, "m")  # no longer reads: never a match


def test_recipes_layer_in_order(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text(
        "align:\n  item_ids: true\n  sal: {objective: all, layers: 2, d_model: 32, recency: true}\n  train: {epochs: 7}\n"
    )
    paper = Path(__file__).parents[1] / "recipes" / "paper-faithful.yaml"
    r = load_recipe([str(base), str(paper)])
    # the paper's model wins where both set a key; what only the base sets stays
    assert (r.align.sal.layers, r.align.sal.objective, r.align.item_ids) == (1, "last", False)
    assert r.align.sal.d_model == 32 and r.align.train.epochs == 7
    assert not r.align.full_softmax and r.align.uniform_negatives == 0 and not r.align.finetune_mfl
    assert not r.align.sal.recency


def test_scientific_notation_reads_as_a_float_and_non_finite_values_are_refused(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("align:\n  train: {lr: 1e-3}\n  tau: 5E-2\n")  # YAML 1.1 reads both as strings
    r = load_recipe(str(p))
    assert r.align.train.lr == 0.001 and r.align.tau == 0.05
    for bad in ("train: {lr: .inf}", "train: {lr: .nan}", "tau: 1e400"):
        p.write_text(f"align:\n  {bad}\n")
        with pytest.raises(RecipeError, match="must be a finite number"):
            load_recipe(str(p))
    p.write_text("align:\n  train: {lr: fast}\n")
    with pytest.raises(RecipeError, match=r"align.train.lr: expected float, got 'fast'"):
        load_recipe(str(p))


def test_a_key_written_twice_is_refused_with_its_line(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("align:\n  tau: 0.1\n  tau: 0.2\n")
    with pytest.raises(RecipeError, match=r"not valid YAML \(line 3, column 3: key 'tau' appears twice"):
        load_recipe(str(p))


def test_a_recorded_recipe_reads_back_the_same(tmp_path):
    import dataclasses

    from mufasa_cli.config import recipe_yaml

    r = load_recipe(str(Path(__file__).parents[1] / "recipes" / "ml-100k.yaml"))
    r = dataclasses.replace(
        r, align=dataclasses.replace(r.align, sal=dataclasses.replace(r.align.sal, without=("window",)))
    )
    p = tmp_path / "recipe.yaml"
    p.write_text(recipe_yaml(r, "a header line\nand another"))
    assert p.read_text().startswith("# a header line\n# and another\n")
    assert load_recipe(str(p)) == r


def test_what_a_stage_records_keeps_upstream_sections(tmp_path):
    import dataclasses

    from mufasa_cli.config import RUN_RECIPE, merged_for_record, recipe_yaml

    a = load_recipe(str(Path(__file__).parents[1] / "recipes" / "ml-100k.yaml"))
    b = Recipe()
    assert merged_for_record(tmp_path, b, "align", True) == b  # nothing recorded yet
    (tmp_path / RUN_RECIPE).write_text(recipe_yaml(a))
    # align-train with other recipe files: its fuse section stays what fuse-train recorded
    m = merged_for_record(tmp_path, b, "align", True)
    assert m.fuse == a.fuse and m.align == b.align and m.baselines == b.baselines
    # align-train without recipe files: the baselines section recorded earlier is kept too
    m = merged_for_record(tmp_path, b, "align", False)
    assert m.fuse == a.fuse and m.align == b.align and m.baselines == a.baselines
    # eval records only the baselines section
    m = merged_for_record(tmp_path, dataclasses.replace(b), "baselines", True)
    assert m.fuse == a.fuse and m.align == a.align and m.baselines == b.baselines


def test_set_changes_any_recipe_setting_by_its_path():
    from mufasa_cli.config import apply_sets

    r = apply_sets(
        Recipe(), ["align.sal.block_size=16", "align.tau=5e-2", "align.sal.without=[window]", "align.item_ids=true"]
    )
    assert (
        r.align.sal.block_size == 16 and r.align.tau == 0.05 and r.align.sal.without == ("window",) and r.align.item_ids
    )
    assert r.fuse == Recipe().fuse
    with pytest.raises(RecipeError, match=r"--set.align.sal: unknown key 'blok'"):
        apply_sets(Recipe(), ["align.sal.blok=4"])
    with pytest.raises(RecipeError, match=r"expected section.key=value"):
        apply_sets(Recipe(), ["align.sal.block_size"])
    with pytest.raises(RecipeError, match=r"align.sal.block_size: expected int, got 'many'"):
        apply_sets(Recipe(), ["align.sal.block_size=many"])


def test_the_align_config_decides_which_schedule_a_flag_changes():
    from mufasa_cli.config import AlignConfig
    from mufasa_cli.sal.config import SALConfig

    last = AlignConfig(sal=SALConfig(objective="last")).with_training(epochs=3)
    assert last.schedule == "train" and last.train.epochs == 3 and last.train_all == AlignConfig().train_all
    every = AlignConfig().with_training(lr=0.01)  # the built-in default: objective all
    assert every.schedule == "train_all" and every.train_all.lr == 0.01 and every.training() is every.train_all


def test_the_built_in_align_default_is_the_general_configuration_and_paper_faithful_pins_the_paper():
    from pathlib import Path

    from mufasa_cli.config import AlignConfig, Recipe, load_recipe
    from mufasa_cli.sal.config import SALConfig

    default = AlignConfig()
    assert (default.sal.objective, default.sal.dropout, default.item_ids, default.full_softmax) == (
        "all",
        0.3,
        True,
        True,
    )
    assert SALConfig().objective == "last" and SALConfig().dropout == 0.0  # the layer alone is the paper's
    recipes = Path(__file__).resolve().parents[1] / "recipes"
    assert load_recipe(str(recipes / "defaults.yaml")) == Recipe()  # the defaults, as a file to pass around
    paper = load_recipe(str(recipes / "paper-faithful.yaml")).align
    assert (paper.sal.objective, paper.sal.dropout, paper.item_ids, paper.full_softmax) == ("last", 0.0, False, False)
    assert (paper.finetune_mfl, paper.learn_tau, paper.uniform_negatives, paper.sal.layers) == (False, False, 0, 1)
