import torch

from fedgen.seeding import derive_seed, numpy_rng, torch_generator


def test_derive_seed_is_a_pure_function_of_root_and_path():
    # Prepare / Execute
    a = derive_seed(7, "round", 3, "client", 1)
    b = derive_seed(7, "round", 3, "client", 1)
    # Assert
    assert a == b
    assert 0 <= a < 2**63


def test_derive_seed_separates_roots_rounds_and_clients():
    seeds = {
        derive_seed(root, "round", r, "client", c)
        for root in (0, 1)
        for r in range(5)
        for c in range(5)
    }
    assert len(seeds) == 2 * 5 * 5


def test_path_parts_are_not_concatenated_ambiguously():
    assert derive_seed(0, "round", 11) != derive_seed(0, "round1", 1)


def test_generators_reproduce_streams():
    x = torch.randn(4, generator=torch_generator(3, "a"))
    y = torch.randn(4, generator=torch_generator(3, "a"))
    z = torch.randn(4, generator=torch_generator(3, "b"))
    assert torch.equal(x, y)
    assert not torch.equal(x, z)
    assert numpy_rng(3, "a").integers(1 << 30) == numpy_rng(3, "a").integers(1 << 30)
