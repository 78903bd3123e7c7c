"""`pm_em.timing`: stages nest, and record the peak of traced memory while tracemalloc runs."""

import tracemalloc

import numpy as np

from pm_em.timing import record, stage

MB = 2**20


def test_stages_nest_and_count():
    with record() as t:
        for _ in range(2):
            with stage("outer"), stage("inner"):
                pass
    assert list(t.seconds) == [("outer",), ("outer", "inner")]
    assert t.counts[("outer",)] == 2
    assert t.seconds[("outer",)] >= t.seconds[("outer", "inner")] >= 0.0
    assert t.peak_bytes == {}  # nothing traced


def test_peak_memory_of_a_stage_survives_its_children():
    tracemalloc.start()
    try:
        with record() as t:
            with stage("outer"):
                big = np.ones(8 * MB // 8)  # 8 MB, freed before the child runs
                del big
                with stage("inner"):
                    small = np.ones(MB // 8)  # 1 MB
                    del small
    finally:
        tracemalloc.stop()
    # The outer stage saw the 8 MB array although the child's mark reset tracemalloc's peak;
    # the inner stage saw only its own 1 MB (and what little else was live).
    assert t.peak_bytes[("outer",)] >= 8 * MB
    assert MB <= t.peak_bytes[("outer", "inner")] < 4 * MB
