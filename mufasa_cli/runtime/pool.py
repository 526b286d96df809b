"""Independent trainings side by side (ablation variants, baselines) in worker processes.

Small models use two CPU threads poorly: one process per core, each with its share of the
threads, finishes a list of trainings sooner than the same list one after another. Workers are
spawned (not forked: torch's thread pools do not survive a fork), print nothing, and return
their results to the caller in the order the calls were given.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any

import torch

Call = tuple[Callable[..., Any], tuple, dict]


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def _without_progress(kwargs: dict) -> dict:
    return {**kwargs, "on_step": None} if "on_step" in kwargs else kwargs


def run_calls(calls: Sequence[Call], jobs: int, on_done: Callable[[int, int], None] | None = None) -> list[Any]:
    """fn(*args, **kwargs) for each call; with jobs > 1, in that many spawned processes sharing
    this process's torch threads (at least one each). Results come back in the order of
    `calls`; on_done(done, total) after each. A keyword `on_step` (a per-step progress
    callback, which cannot cross processes) is dropped for the calls that go to workers. The
    first error is raised once the calls still running finish (the ones not started are
    dropped), so no artifact is left half-written."""
    total = len(calls)
    if jobs <= 1 or total <= 1:
        results = []
        for i, (fn, args, kwargs) in enumerate(calls):
            results.append(fn(*args, **kwargs))
            if on_done:
                on_done(i + 1, total)
        return results
    jobs = min(jobs, total)
    threads = max(1, torch.get_num_threads() // jobs)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=_init_worker, initargs=(threads,)) as pool:
        futures = [pool.submit(fn, *args, **_without_progress(kwargs)) for fn, args, kwargs in calls]
        pending, done = set(futures), 0
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for f in finished:
                if f.exception() is not None:
                    for p in pending:
                        p.cancel()
                    raise f.exception()
            done += len(finished)
            if on_done:
                on_done(done, total)
        return [f.result() for f in futures]
