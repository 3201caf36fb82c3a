import math

import pytest
import torch
import torch.nn.functional as F

from simclr import losses
from simclr.losses import NTXentLoss, nt_xent


def reference_nt_xent(z1: torch.Tensor, z2: torch.Tensor, t: float) -> torch.Tensor:
    """The paper's formula with explicit loops: mean over the 2N anchors of l(i, j)."""
    z = torch.cat([z1, z2])
    two_n = z.shape[0]
    n = two_n // 2

    def sim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a @ b) / (a.norm() * b.norm())

    total = torch.zeros((), dtype=z.dtype)
    for i in range(two_n):
        j = (i + n) % two_n  # the other view of the same image
        denominator = torch.zeros((), dtype=z.dtype)
        for k in range(two_n):
            if k != i:
                denominator = denominator + torch.exp(sim(z[i], z[k]) / t)
        total = total - torch.log(torch.exp(sim(z[i], z[j]) / t) / denominator)
    return total / two_n


def _pair(n: int = 6, d: int = 5, seed: int = 0, dtype: torch.dtype = torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=dtype), torch.randn(n, d, generator=g, dtype=dtype)


@pytest.mark.parametrize("t", [0.1, 0.5, 1.0])
def test_matches_loop_reference(t: float) -> None:
    z1, z2 = _pair()
    torch.testing.assert_close(nt_xent(z1, z2, t), reference_nt_xent(z1, z2, t), rtol=1e-12, atol=0)


def test_gradient_matches_reference_without_self_pair() -> None:
    # The reference leaves k == i out of the denominator entirely; equal values and gradients
    # show the mask removes the self-pair rather than subtracting or down-weighting it.
    z1, z2 = _pair(seed=1)
    a1, a2 = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    b1, b2 = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    nt_xent(a1, a2, 0.3).backward()
    reference_nt_xent(b1, b2, 0.3).backward()
    torch.testing.assert_close(a1.grad, b1.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(a2.grad, b2.grad, rtol=1e-10, atol=1e-12)
    # Including the self term (exp(1/t) in every denominator) would give another value.
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    logits = z @ z.T / 0.3
    with_self = F.cross_entropy(logits, torch.cat([torch.arange(6) + 6, torch.arange(6)]))
    assert not torch.isclose(with_self, nt_xent(z1, z2, 0.3))


def test_symmetric_in_the_views() -> None:
    z1, z2 = _pair(seed=2)
    torch.testing.assert_close(nt_xent(z1, z2, 0.2), nt_xent(z2, z1, 0.2), rtol=1e-13, atol=0)


def test_invariant_to_permuting_the_pairs() -> None:
    z1, z2 = _pair(n=8, seed=3)
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(
        nt_xent(z1[perm], z2[perm], 0.5), nt_xent(z1, z2, 0.5), rtol=1e-13, atol=0
    )


@pytest.mark.parametrize("n", [1, 2, 5])
def test_all_equal_embeddings_give_log_2n_minus_1(n: int) -> None:
    z = torch.ones(n, 4, dtype=torch.float64)
    loss = nt_xent(z, 3 * z, 0.1)
    assert loss.item() == pytest.approx(math.log(2 * n - 1), abs=1e-12)


def test_invariant_to_scale() -> None:
    z1, z2 = _pair(seed=4)
    scales = torch.linspace(0.1, 10.0, 6, dtype=torch.float64)[:, None]
    torch.testing.assert_close(
        nt_xent(3.0 * z1, scales * z2, 0.5), nt_xent(z1, z2, 0.5), rtol=1e-12, atol=0
    )


def test_gradcheck() -> None:
    z1, z2 = _pair(n=4, d=3, seed=5)
    z1.requires_grad_()
    z2.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: nt_xent(a, b, 0.5), (z1, z2))


@pytest.mark.parametrize("unshifted_max_scale", [40.0, 0.0])  # unshifted, or shifted by row maxima
@pytest.mark.parametrize("block_elements", [1, 13, 24, 1 << 22])
def test_blocks_of_rows_give_the_same_loss_and_gradients(
    block_elements, unshifted_max_scale, monkeypatch
) -> None:
    # 2N = 12 anchors x 12 candidates: blocks of 1 row, of 1 row again (13 // 12), of 2 rows, of all
    monkeypatch.setattr(losses, "BLOCK_ELEMENTS", block_elements)
    monkeypatch.setattr(losses, "UNSHIFTED_MAX_SCALE", unshifted_max_scale)
    monkeypatch.setattr(losses, "SYMMETRIC_TILE", 5)  # one block: tiles of 5, 5 and 2 rows
    z1, z2 = _pair(seed=9)
    a1, a2 = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    b1, b2 = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    loss = nt_xent(a1, a2, 0.3)
    loss.backward()
    expected = reference_nt_xent(b1, b2, 0.3)
    expected.backward()
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(a1.grad, b1.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(a2.grad, b2.grad, rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradcheck(
        lambda a, b: nt_xent(a, b, 0.5),
        (a1.detach().requires_grad_(), a2.detach().requires_grad_()),
    )


def test_backward_under_autocast_stays_float32() -> None:
    z1, z2 = _pair(n=32, d=16, seed=10, dtype=torch.float32)
    a1 = z1.clone().requires_grad_()
    b1 = z1.clone().requires_grad_()
    nt_xent(b1, z2, 0.1).backward()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        nt_xent(a1, z2, 0.1).backward()
    torch.testing.assert_close(a1.grad, b1.grad, rtol=1e-6, atol=1e-8)


def test_stable_at_low_temperature() -> None:
    z1, z2 = _pair(n=16, d=8, seed=6, dtype=torch.float32)
    z1.requires_grad_()
    loss = nt_xent(z1, z2, 0.01)
    loss.backward()
    assert torch.isfinite(loss)
    assert z1.grad is not None and torch.isfinite(z1.grad).all()
    expected = nt_xent(z1.detach().double(), z2.double(), 0.01)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4)


def test_unshifted_exponentials_are_exact_at_their_limit_for_opposite_views() -> None:
    # t = 0.025 is the smallest temperature whose logits are not shifted by the row max: with
    # every positive pointing away from its anchor the logits reach -1/t, exp(-40) ~ 4e-18.
    z1, z2 = _pair(n=4, d=8, seed=12, dtype=torch.float32)
    z1 = z1.requires_grad_()
    loss = nt_xent(z1, -z1.detach(), 1 / losses.UNSHIFTED_MAX_SCALE)
    loss.backward()
    expected = reference_nt_xent(z1.detach().double(), -z1.detach().double(), 0.025)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert z1.grad is not None and torch.isfinite(z1.grad).all()


def test_bf16_inputs_are_computed_in_float32() -> None:
    z1, z2 = _pair(n=32, d=16, seed=7, dtype=torch.float32)
    h1, h2 = z1.bfloat16().requires_grad_(), z2.bfloat16()
    loss = nt_xent(h1, h2, 0.1)
    assert loss.dtype == torch.float32
    loss.backward()
    assert h1.grad is not None and h1.grad.dtype == torch.bfloat16
    assert torch.isfinite(h1.grad.float()).all()
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss, nt_xent(h1.detach().float(), h2.float(), 0.1))
    assert loss.item() == pytest.approx(nt_xent(z1, z2, 0.1).item(), rel=2e-2)


def test_autocast_does_not_lower_the_precision() -> None:
    z1, z2 = _pair(n=32, d=16, seed=8, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = nt_xent(z1, z2, 0.1)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, nt_xent(z1, z2, 0.1))


def test_perfectly_separated_pairs_give_almost_zero() -> None:
    z = torch.eye(8, dtype=torch.float64)  # orthogonal images, identical views
    loss = nt_xent(z, z.clone(), 0.05)
    # Closed form log(1 + (2N - 2) exp(-1/t)).
    assert loss.item() == pytest.approx(math.log1p(14 * math.exp(-20.0)), rel=1e-9)
    assert loss.item() < 1e-6


def test_float32_output_and_default_gather_without_process_group() -> None:
    z1, z2 = _pair(dtype=torch.float32)
    torch.testing.assert_close(nt_xent(z1, z2, 0.5), nt_xent(z1, z2, 0.5, gather=False))


@pytest.mark.parametrize("t", [0.0, -1.0])
def test_module_rejects_non_positive_temperature(t: float) -> None:
    with pytest.raises(ValueError, match=str(t)):
        NTXentLoss(temperature=t)
    with pytest.raises(ValueError, match="temperature"):
        nt_xent(*_pair(), t)


def test_rejects_bad_shapes() -> None:
    z1, z2 = _pair()
    with pytest.raises(ValueError, match="N, D"):
        nt_xent(z1, z2[:-1], 0.5)
    with pytest.raises(ValueError, match="N, D"):
        nt_xent(z1[0], z2[0], 0.5)


def test_module_calls_the_function() -> None:
    z1, z2 = _pair(seed=9)
    module = NTXentLoss(temperature=0.2)
    assert "temperature=0.2" in repr(module)
    torch.testing.assert_close(module(z1, z2), nt_xent(z1, z2, 0.2))
    assert NTXentLoss().temperature == 0.5


def test_double_backward_is_refused_rather_than_wrong() -> None:
    z1, z2 = _pair(seed=11)
    z1.requires_grad_()
    (grad,) = torch.autograd.grad(nt_xent(z1, z2, 0.5), z1)  # first order: fine
    assert torch.isfinite(grad).all()
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(nt_xent(z1, z2, 0.5), z1, create_graph=True)
