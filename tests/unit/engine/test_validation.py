import pytest
import torch

from fedgen.engine.validation import check_update
from fedgen.errors import ClientUpdateError

REF = {"a": torch.zeros(2, 3), "b": torch.zeros(4)}


def test_good_update_returns_its_norm():
    norm = check_update({"a": torch.ones(2, 3), "b": torch.zeros(4)}, REF, max_norm=10.0)
    assert norm == pytest.approx(6**0.5)


@pytest.mark.parametrize(
    ("update", "match"),
    [
        ({"a": torch.zeros(3, 2), "b": torch.zeros(4)}, "shape"),
        ({"a": torch.zeros(2, 3)}, "missing"),
        ({"a": torch.zeros(2, 3), "b": torch.zeros(4), "c": torch.zeros(1)}, "unexpected"),
        ({"a": torch.full((2, 3), float("nan")), "b": torch.zeros(4)}, "NaN"),
        ({"a": torch.zeros(2, 3), "b": torch.tensor([0, 0, float("inf"), 0])}, "NaN or Inf"),
        ({"a": torch.full((2, 3), 1e6), "b": torch.zeros(4)}, "exceeds"),
        ({"a": torch.zeros(2, 3, dtype=torch.float64), "b": torch.zeros(4)}, "dtype"),
    ],
)
def test_malformed_updates_are_rejected(update, match):
    with pytest.raises(ClientUpdateError, match=match):
        check_update(update, REF, max_norm=1e3)
