import pytest

from shortcut_core import full_step_indices, parse_full_steps, resolve_full_steps, reveal_counts
from shortcut_core.schedules import REVEAL_MODES


def test_spec_full_step_examples():
    assert full_step_indices(32, 12) == [0, 3, 5, 8, 11, 13, 16, 19, 21, 24, 27, 29]
    assert full_step_indices(64, 11) == [0, 6, 12, 17, 23, 29, 35, 41, 47, 52, 58]


def test_full_step_edges():
    assert full_step_indices(8, 8) == list(range(8))  # B = N is plain sampling
    assert full_step_indices(8, 1) == [0]
    # round() is half-to-even: N=10, B=4 -> 2.5 -> 2, 5, 7.5 -> 8
    assert full_step_indices(10, 4) == [0, 2, 5, 8]


@pytest.mark.parametrize("b", [0, -1, 33])
def test_full_steps_out_of_range(b):
    with pytest.raises(ValueError, match="between 1 and the number of steps N=32"):
        full_step_indices(32, b)


def test_parse_full_steps():
    assert parse_full_steps("0, 3,5;8", 10) == [0, 3, 5, 8]
    assert parse_full_steps([0, 2], 3) == [0, 2]
    with pytest.raises(ValueError, match="must start at 0"):
        parse_full_steps("1,3", 10)
    with pytest.raises(ValueError, match="strictly increasing"):
        parse_full_steps("0,3,3", 10)
    with pytest.raises(ValueError, match="outside 0..9"):
        parse_full_steps("0,10", 10)
    with pytest.raises(ValueError, match="comma-separated integers"):
        parse_full_steps("0,x", 10)
    with pytest.raises(ValueError, match="empty"):
        parse_full_steps(" ", 10)


def test_resolve_full_steps():
    assert resolve_full_steps(5, None) == [0, 1, 2, 3, 4]
    assert resolve_full_steps(32, 12) == full_step_indices(32, 12)
    assert resolve_full_steps(10, "0,4") == [0, 4]


@pytest.mark.parametrize("mode", REVEAL_MODES)
@pytest.mark.parametrize("n,steps", [(1024, 15), (1024, 32), (49, 16), (16, 16), (49, 1)])
def test_reveal_counts_sum_and_positive(mode, n, steps):
    counts = reveal_counts(n, steps, mode)
    assert len(counts) == steps and sum(counts) == n and min(counts) >= 1


def test_reveal_counts_arccos_reference():
    # MaskGIT's arccos schedule at N=15 for 32x32 tokens starts slow and accelerates.
    counts = reveal_counts(1024, 15, "arccos")
    assert counts[:3] == [1, 26, 38] and counts[-1] == 109


def test_reveal_counts_errors():
    with pytest.raises(ValueError, match="unknown reveal schedule 'nope'"):
        reveal_counts(16, 4, "nope")
    with pytest.raises(ValueError, match="at most 16"):
        reveal_counts(16, 17)
