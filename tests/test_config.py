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
    base.write_text("align:\n  item_ids: true\n  sal: {objective: all, layers: 2, d_model: 32}\n  train: {epochs: 7}\n")
    paper = Path(__file__).parents[1] / "recipes" / "paper-faithful.yaml"
    r = load_recipe([str(base), str(paper)])
    # the paper's model wins where both set a key; what only the base sets stays
    assert (r.align.sal.layers, r.align.sal.objective, r.align.item_ids) == (1, "last", False)
    assert r.align.sal.d_model == 32 and r.align.train.epochs == 7
    assert not r.align.full_softmax and r.align.uniform_negatives == 0 and not r.align.finetune_mfl
