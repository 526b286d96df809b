"""Cross-genre same-topic precision by hand, and its query subsample for large catalogues."""

import numpy as np

from mufasa_cli.mfl.diagnostics import cross_genre_topic_precision


def test_cross_genre_precision_by_hand_and_subsampled_queries():
    # four items, two genres; items 0 and 2 share topic 0, items 1 and 3 topic 1
    v = np.array([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1], [0.6, 0.4]])
    genre, topic = np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1])
    mask = np.ones(4, dtype=bool)
    # k=1: item 0 -> nearest other-genre is 2 (hit); 1 -> 3 (hit); 2 -> 0 (hit); 3 -> 0 (miss)
    assert cross_genre_topic_precision(v, mask, genre, topic, k=1) == 0.75
    # two evenly spaced queries: items 0 and 3 -> (1 + 0) / 2
    assert cross_genre_topic_precision(v, mask, genre, topic, k=1, max_queries=2) == 0.5
