"""A failing rank must not hang the others: survivors raise within the group timeout.

Rank 1 of 2 either crashes (raises, its process exits) or hangs (never enters the collective);
rank 0 runs Ulysses attention over mesh groups created with a TIMEOUT_S timeout. The bound
allows the timeout plus scheduling slack on a loaded 2-core machine; without a timeout gloo
would wait 30 minutes and the harness deadline would fail the test instead.
"""
import re

import pytest

from sp_harness import run_ranks
from sp_workers import failing_rank_suite

TIMEOUT_S = 4.0
SLACK_S = 10.0


@pytest.mark.parametrize("mode", ["crash", "hang"])
def test_survivor_fails_in_bounded_time(mode):
    outcomes = run_ranks(2, failing_rank_suite, mode, TIMEOUT_S, deadline_s=90.0)
    survivor, failing = outcomes
    assert not survivor.ok and survivor.exitcode != 0, survivor
    waited = re.search(r"survivor failed after ([0-9.]+) s", survivor.value)
    assert waited, survivor.value
    assert float(waited.group(1)) < TIMEOUT_S + SLACK_S, survivor.value
    if mode == "crash":
        assert not failing.ok and "simulated crash of rank 1" in failing.value
    else:
        # The hung rank itself finishes normally after sleeping past the timeout.
        assert failing.ok and failing.exitcode == 0
        # A hang can only end by the timeout: proves the timeout, not luck, bounded the wait.
        assert float(waited.group(1)) >= TIMEOUT_S - 0.5, survivor.value
    print(mode, "survivor error after", waited.group(1), "s:", survivor.value.strip().splitlines()[-1])
