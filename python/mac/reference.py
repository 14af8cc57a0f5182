"""The pure-PyTorch reference of the rollout API: best-of-N selection and imagined rollouts.

The oracle of the native cores and of the tests. It sits below both :mod:`mac.rollout` (which
dispatches to it for ``backend="torch"`` and re-exports it) and :mod:`mac.selfcheck` (which judges the
native cores against it), so that neither of those needs the other to reach it.
"""

from __future__ import annotations

import torch

from mac.nets import GaussianActor
from mac.results import BestOfN, Rollout


def concat_inputs(*parts):
    """A network input [a, b, ...] along the last dim, the parts that are None (no goals) left out."""
    return torch.cat([p for p in parts if p is not None], dim=-1)


def select_best(scores: torch.Tensor) -> torch.Tensor:
    """Argmax over dim 0 of (N, B) scores: ties go to the lowest index, NaN never wins (an all-NaN
    column picks 0). torch.argmax returns the first maximal index, which gives the tie rule."""
    ranked = torch.where(torch.isnan(scores), torch.full_like(scores, float("-inf")), scores)
    return ranked.argmax(dim=0)


def candidates(actor, states, goals, noise) -> torch.Tensor:
    """Candidate chunks in [-1, 1] for standard normal ``noise`` (..., C): clip(actor([s, g, z]), -1, 1)
    for the one-step actor; clip(tanh(mean + std z), -1, 1) for a GaussianActor (the authors'
    ``dist.sample`` then ``jnp.clip``). states/goals broadcast to noise's leading dims by the caller."""
    if isinstance(actor, GaussianActor):
        return actor.sample(concat_inputs(states, goals), noise).clamp(-1.0, 1.0)
    return actor(concat_inputs(states, goals, noise)).clamp(-1.0, 1.0)


def candidate_scores(states, goals, actor, critic, noise):
    """The N candidates (N, B, C) of every row and their critic values (N, B), in the inputs' dtype
    (tests and checks use it in float64 to see how clear each argmax is). ``noise``: (N, B, C)."""
    N = noise.shape[0]
    s = states.unsqueeze(0).expand(N, -1, -1)
    g = goals.unsqueeze(0).expand(N, -1, -1) if goals is not None else None
    cands = candidates(actor, s, g, noise)
    return cands, critic(concat_inputs(s, g, cands)).squeeze(-1)


def best_of_n_reference(states, goals, actor, critic, noise) -> BestOfN:
    """Pure PyTorch best-of-N. ``noise``: (N, B, C)."""
    cands, q = candidate_scores(states, goals, actor, critic, noise)      # (N, B, C), (N, B)
    indices = select_best(q)                                              # (B,)
    rows = torch.arange(states.shape[0], device=states.device)
    return BestOfN(cands[indices, rows], q[indices, rows], indices)


def reward_and_mask(states, goals, chunks, reward, success):
    """The MAC reward/mask rule for one imagined step. Returns (rewards (B,), masks (B,))."""
    if success is not None:
        # sigmoid(logit) > 0.5  <=>  logit > 0 (and NaN is not a success), written so every backend agrees.
        succeeded = (success(concat_inputs(states, goals, chunks)).squeeze(-1) > 0).to(states.dtype)
    else:
        succeeded = torch.zeros(states.shape[0], dtype=states.dtype, device=states.device)
    if reward is None:  # goal-conditioned: r = success - 1
        return succeeded - 1.0, 1.0 - succeeded
    return reward(concat_inputs(states, goals, chunks)).squeeze(-1), 1.0 - succeeded


def imagine_reference(states, goals, actor, critic, dynamics, reward, success, noise) -> Rollout:
    """Pure PyTorch imagined rollout. ``noise``: (H, N, B, C)."""
    H = noise.shape[0]
    s = states
    all_states, chunks, rewards, masks, qs = [s], [], [], [], []
    for k in range(H):
        choice = best_of_n_reference(s, goals, actor, critic, noise[k])
        r, m = reward_and_mask(s, goals, choice.chunks, reward, success)
        s = s + dynamics(concat_inputs(s, choice.chunks))
        all_states.append(s)
        chunks.append(choice.chunks)
        rewards.append(r)
        masks.append(m)
        qs.append(choice.scores)
    return Rollout(torch.stack(all_states), torch.stack(chunks), torch.stack(rewards),
                   torch.stack(masks), torch.stack(qs))
