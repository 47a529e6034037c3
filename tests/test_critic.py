import math

import pytest
import torch

from mine_vae.critic import MineCritic, derangement, mi_lower_bound


def hand_bound(joint: list[float], marginal: list[float], xi: float) -> float:
    mean_exp = sum(math.exp(m) for m in marginal) / len(marginal)
    return sum(joint) / len(joint) - xi * mean_exp + math.log(xi) + 1


@pytest.mark.parametrize("xi", [1.0, 0.5, 3.0])
def test_fixed_xi_bound_matches_hand_computation(xi):
    joint, marginal = [1.5, 0.2, -0.3, 2.0], [0.1, -1.0, 0.7, 0.0]
    got = mi_lower_bound(torch.tensor(joint), torch.tensor(marginal), xi=xi)
    assert got.item() == pytest.approx(hand_bound(joint, marginal, xi), rel=1e-6)


def test_dv_bound_is_the_best_xi():
    joint, marginal = [1.5, 0.2, -0.3, 2.0], [0.1, -1.0, 0.7, 0.0]
    mean_exp = sum(math.exp(m) for m in marginal) / len(marginal)
    dv = mi_lower_bound(torch.tensor(joint), torch.tensor(marginal), xi="dv").item()
    assert dv == pytest.approx(sum(joint) / 4 - math.log(mean_exp), rel=1e-6)
    # DV is the fixed-xi bound at xi = 1 / E[e^f], and no other xi gives more.
    assert dv == pytest.approx(hand_bound(joint, marginal, 1 / mean_exp), rel=1e-6)
    for xi in (0.3, 1.0, 2.0):
        assert dv >= hand_bound(joint, marginal, xi)


def test_ema_bound_uses_the_moving_average_as_inverse_xi():
    joint, marginal = torch.tensor([1.0, 2.0]), torch.tensor([0.5, -0.5])
    log_ema = torch.tensor(0.3)
    got = mi_lower_bound(joint, marginal, xi="ema", log_ema=log_ema).item()
    assert got == pytest.approx(hand_bound([1.0, 2.0], [0.5, -0.5], math.exp(-0.3)), rel=1e-6)
    with pytest.raises(ValueError, match="log_ema"):
        mi_lower_bound(joint, marginal, xi="ema")


@pytest.mark.parametrize("xi", [1.0, "dv", "ema"])
@pytest.mark.parametrize("scale", [1e4, -1e4])
def test_bound_stays_finite_for_huge_scores(xi, scale):
    joint = torch.full((8,), scale, requires_grad=True)
    marginal = torch.full((8,), scale, requires_grad=True)
    bound = mi_lower_bound(joint, marginal, xi=xi, log_ema=torch.tensor(0.0))
    bound.backward()
    assert torch.isfinite(bound)
    assert torch.isfinite(joint.grad).all() and torch.isfinite(marginal.grad).all()


def test_huge_marginal_scores_give_a_very_negative_but_finite_bound():
    bound = mi_lower_bound(torch.zeros(4), torch.full((4,), 1e4), xi=1.0)
    assert torch.isfinite(bound) and bound.item() < -1e8


def test_derangement_has_no_fixed_point():
    for size in (2, 3, 7, 64):
        for seed in range(20):
            perm = derangement(size, generator=torch.Generator().manual_seed(seed))
            assert sorted(perm.tolist()) == list(range(size))
            assert (perm != torch.arange(size)).all()
    with pytest.raises(ValueError, match="at least 2"):
        derangement(1)


def test_critic_moving_average_starts_at_first_batch_then_decays():
    critic = MineCritic(feature_size=4, latent_size=3, hidden_size=8, num_layers=2, xi="ema", ema_decay=0.9)
    first, second = torch.tensor([0.0, 1.0]), torch.tensor([2.0, 2.0])
    critic.update_moving_average(first)
    expected = math.log((1 + math.e) / 2)
    assert critic.log_ema.item() == pytest.approx(expected, rel=1e-6)
    critic.update_moving_average(second)
    expected = math.log(0.9 * math.exp(expected) + 0.1 * math.exp(2.0))
    assert critic.log_ema.item() == pytest.approx(expected, rel=1e-6)
    assert critic.ema_updates.item() == 2


def test_a_frozen_critic_takes_no_gradient_and_gets_its_flags_back():
    """`frozen()` holds the critic fixed for the block (no gradient reaches it, though z still gets one) and leaves
    each parameter as trainable as it was before, an already frozen one included."""
    critic = MineCritic(feature_size=4, latent_size=3, hidden_size=8, num_layers=2)
    critic.feature_norm.requires_grad_(False)
    before = [p.requires_grad for p in critic.parameters()]
    latent = torch.randn(5, 3, requires_grad=True)
    with critic.frozen():
        assert not any(p.requires_grad for p in critic.parameters())
        joint, marginal = critic(torch.randn(5, 4), latent, derangement(5))
        critic.lower_bound(joint, marginal).backward()
    assert latent.grad is not None and latent.grad.abs().sum() > 0
    assert all(p.grad is None for p in critic.parameters())
    assert [p.requires_grad for p in critic.parameters()] == before and not all(before)


def test_standardizing_the_critics_latent_scores_every_pair_as_before():
    """With z' = (z - mean) / std, the re-centred critic scores (x, z') as the critic before scored (x, z)."""
    torch.manual_seed(0)
    critic = MineCritic(feature_size=4, latent_size=3, hidden_size=8, num_layers=2)
    features, latent, permutation = torch.randn(6, 4), torch.randn(6, 3), derangement(6)
    mean, std = torch.tensor([0.5, -2.0, 1.0]), torch.tensor([2.0, 0.5, 3.0])
    expected = critic(features, latent, permutation)
    critic.standardize_latent(mean, std)
    got = critic(features, (latent - mean) / std, permutation)
    for want, have in zip(expected, got):
        torch.testing.assert_close(have, want)


def test_critic_learns_dependence():
    """Trained on pairs where z copies x, the critic's bound rises well above 0 (and stays 0-ish when independent)."""
    torch.manual_seed(0)
    critic = MineCritic(feature_size=4, latent_size=4, hidden_size=32, num_layers=2, xi="dv")
    optimizer = torch.optim.Adam(critic.parameters(), lr=1e-2)
    for _ in range(150):
        x = torch.randn(64, 4)
        z = x + 0.1 * torch.randn(64, 4)
        joint, marginal = critic(x, z, derangement(64))
        loss = -critic.lower_bound(joint, marginal)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    x = torch.randn(256, 4)
    with torch.no_grad():
        dependent = critic.lower_bound(*critic(x, x + 0.1 * torch.randn(256, 4), derangement(256)))
        independent = critic.lower_bound(*critic(x, torch.randn(256, 4), derangement(256)))
    assert dependent.item() > 1.5
    assert independent.item() < 0.5


@pytest.mark.parametrize("xi", ["dv", "ema", 1.0])
def test_bounded_scores_cap_the_estimate_where_unbounded_ones_run_away(xi):
    """A critic that separates joint from marginal pairs and keeps scaling its scores drives the minibatch estimate
    without limit (the runaway); with score_bound c its scores stay within [-c, c], the estimate at most 2c, and the
    gradient it sends to z fades as the scores saturate."""
    torch.manual_seed(0)
    features, latent = torch.randn(8, 6), torch.randn(8, 4)
    perm = derangement(8)
    estimates, gradients = {}, {}
    for bound in (None, 2.0):
        critic = MineCritic(feature_size=6, latent_size=4, hidden_size=16, num_layers=2, xi=xi, score_bound=bound)
        critic.update_moving_average(critic(features, latent, perm)[1])
        z = latent.clone().requires_grad_(True)
        with torch.no_grad():  # a critic whose scores have grown large (what the runaway produces)
            critic.mlp[-1].weight.mul_(1e3)
        joint, marginal = critic(features, z, perm)
        estimate = critic.lower_bound(joint, marginal)
        estimate.backward()
        estimates[bound], gradients[bound] = estimate.item(), z.grad.norm().item()
        if bound is not None:
            assert joint.abs().max() <= bound and marginal.abs().max() <= bound
            assert math.isfinite(estimate.item()) and estimate.item() <= 2 * bound
    assert abs(estimates[None]) > 10 * 2 * 2.0  # unbounded: far outside the capped range
    assert gradients[2.0] < gradients[None] / 10


def test_the_model_builds_its_critic_with_the_configs_score_bound():
    import tiny

    from mine_vae import MineVaeConfig

    assert tiny.model(critic_score_bound=2).critic.score_bound == 2
    assert tiny.model().critic.score_bound is None  # the paper's unbounded critic by default
    for wrong in (True, "5", 0, -1.0):
        with pytest.raises(ValueError, match="critic_score_bound"):
            MineVaeConfig(critic_score_bound=wrong)
