import numpy as np
import pytest

from mufasa_cli.data.text import MAX_TITLE_SHARED, normalise_title, text_extra_installed, title_quality


def test_title_quality_rules():
    titles = [
        "Clippers beat Warriors in game six",  # fine
        None,  # missing
        "   ",  # empty
        "wow so",  # 2 tokens
        "#vlog !!",  # punctuation does not count as words: 1 token
        *["watch till the end"] * MAX_TITLE_SHARED,  # shared by many items
        *["Watch, till the END!"] * 0,
        "a unique three",  # exactly 3 tokens
    ]
    ok = title_quality(titles)
    assert ok.tolist() == [True, False, False, False, False, *[False] * MAX_TITLE_SHARED, True]
    assert title_quality(["Heat", "Up"], min_tokens=1).tolist() == [True, True]


def test_sharing_counts_normalised_titles():
    titles = ["Watch till the end", "watch, till the END!", "WATCH till the end..."]
    assert normalise_title(titles[1]) == "watch till the end"
    assert title_quality(titles).tolist() == [False] * 3  # 3 items share one title
    assert title_quality(titles[:2]).tolist() == [True, True]


@pytest.mark.skipif(not text_extra_installed(), reason="the 'text' extra is not installed")
def test_minilm_embeds_offline_normalised_and_semantic():
    from mufasa_cli.data.text import MiniLMEncoder

    enc = MiniLMEncoder()
    v = enc.encode(["NBA finals game six highlights", "basketball playoff recap", "how to bake sourdough bread"])
    assert v.shape == (3, 384) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.2
    # order in == order out, whatever the length sort inside
    w = enc.encode(["how to bake sourdough bread", "NBA finals game six highlights"])
    np.testing.assert_allclose(w[1], v[0], atol=1e-5)


class _CountingEncoder:
    """A stand-in encoder: deterministic vectors, counts how many texts it embedded."""

    dim = 4
    cache_key = "counting"

    def __init__(self):
        self.calls = 0

    def encode(self, texts, on_progress=None):
        self.calls += len(texts)
        return np.array([[len(t), t.count("a"), 1.0, 0.0] for t in texts], dtype=np.float32)


def test_encode_titles_dedupes_and_caches(tmp_path, monkeypatch):
    from mufasa_cli.data.text import encode_titles

    monkeypatch.setenv("MUFASA_CACHE_DIR", str(tmp_path))
    enc = _CountingEncoder()
    titles = ["banana bread", "apple pie", "banana bread"]
    v, hit = encode_titles(enc, titles)
    assert not hit and enc.calls == 2  # the repeated title is encoded once
    np.testing.assert_array_equal(v[0], v[2])
    np.testing.assert_array_equal(v[1], [9, 1, 1, 0])
    w, hit = encode_titles(enc, titles)
    assert hit and enc.calls == 2
    np.testing.assert_array_equal(v, w)
    # another title list is another cache entry
    _, hit = encode_titles(enc, ["apple pie"])
    assert not hit and enc.calls == 3
