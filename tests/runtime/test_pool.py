"""runtime.pool: trainings side by side keep the callers' order, count progress, and raise the
first error."""

import pytest

from mufasa_cli.runtime.pool import run_calls


def test_results_come_back_in_call_order_with_progress_counted_per_call():
    calls = [(pow, (2, k), {}) for k in range(5)]
    seen = []
    assert run_calls(calls, 2, lambda done, total: seen.append((done, total))) == [1, 2, 4, 8, 16]
    assert seen[-1] == (5, 5) and all(t == 5 for _, t in seen)
    assert [d for d, _ in seen] == sorted({d for d, _ in seen})  # rising, one report per change
    inline = []
    assert run_calls(calls, 1, lambda done, total: inline.append(done)) == [1, 2, 4, 8, 16]
    assert inline == [1, 2, 3, 4, 5]


def test_an_error_in_a_worker_is_raised_in_the_caller():
    with pytest.raises(ValueError, match="invalid literal"):
        run_calls([(pow, (2, 1), {}), (int, ("x",), {})], 2)
