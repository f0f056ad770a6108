import random

import numpy as np
import torch

from common.seeding import derive_seed, seed_everything


def _draw() -> tuple[float, np.ndarray, np.ndarray, torch.Tensor]:
    return random.random(), np.random.rand(5), np.random.default_rng().random(1), torch.randn(4)  # noqa: NPY002


def test_same_seed_same_numbers_everywhere():
    g1 = seed_everything(123)
    a = (random.random(), np.random.rand(5), g1.random(3), torch.randn(4))  # noqa: NPY002
    g2 = seed_everything(123)
    b = (random.random(), np.random.rand(5), g2.random(3), torch.randn(4))  # noqa: NPY002
    assert a[0] == b[0]
    assert np.array_equal(a[1], b[1])
    assert np.array_equal(a[2], b[2])
    assert torch.equal(a[3], b[3])


def test_different_seeds_differ():
    seed_everything(1)
    x = torch.randn(8)
    seed_everything(2)
    assert not torch.equal(x, torch.randn(8))


def test_torch_training_step_is_bitwise_repeatable():
    def train() -> torch.Tensor:
        seed_everything(7)
        model = torch.nn.Linear(16, 3)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        x, y = torch.randn(64, 16), torch.randint(0, 3, (64,))
        for _ in range(5):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        return model.weight.detach().clone()

    assert torch.equal(train(), train())


def test_derive_seed_is_stable_and_distinct():
    assert derive_seed(0, "client", 3) == derive_seed(0, "client", 3)
    assert derive_seed(0, "client", 3) != derive_seed(0, "client", 4)
    assert derive_seed(0, "a-long-key-name-1") != derive_seed(0, "a-long-key-name-2")


def test_negative_seed_is_refused():
    import pytest

    with pytest.raises(ValueError, match="seed"):
        seed_everything(-1)
