import pytest

from ava256.train.trainer import _due


@pytest.mark.parametrize(
    "every, due_at", [(5, [5, 10, 15]), (1, list(range(1, 16))), (0, []), (-1, []), ("3", [3, 6, 9, 12, 15])]
)
def test_periodic_actions_fire_on_multiples_and_zero_disables(every, due_at):
    assert [i for i in range(1, 16) if _due(i, every)] == due_at
