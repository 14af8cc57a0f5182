"""Diagnostics logged with every train.csv row, as the authors' main.py logs them (docs/FIDELITY.md):

- ``val/<column>``: every ``loss/*``, ``rollout/*`` (and ``actor/*``) value of a step, computed without a
  gradient step on a batch of ``batch_size`` chunks of the validation split (their
  ``validation/<name>`` from ``agent.total_loss(val_batch, grad_params=None)``);
- ``metrics/mse``: squared error between the chunk the policy chooses for the training batch's states
  (best-of-N_train with the actor goals; the single sample with extraction=q_gradient) and the dataset
  chunk, averaged over batch and chunk (their ``compute_metrics``);
- ``metrics/rollout/mse_<k h>``: model error after k chunk-model calls along real chunk sequences: 15
  runs of L = 150 // h consecutive chunks of the training data, the learned dynamics fed the real
  chunks from the real first state (their ``rollout_metrics`` of agents/model_ac.py and the names
  main.py gives them; L is capped by the longest episode).

They are computed only at log steps, never change the training random streams (torch's generators
are forked, the samplers are separate NumPy generators) and are a function of (seed, step, agent):
a resumed run logs the same numbers as a straight one.
"""

from __future__ import annotations

import torch

from mac.batches import to_device
from mac.checkpoint import forked_rng
from mac.data import ChunkSampler

DIAG_SEED_OFFSET = 20_000
ROLLOUT_SEQUENCES = 15       # main.py: train_dataset.sample_consecutive(15, 150 // action_chunking)
ROLLOUT_ENV_STEPS = 150


class Diagnostics:
    """``compute(agent, train_batch, step)`` -> the diagnostic columns of the row of ``step``."""

    def __init__(self, config, train_data, val_data, *, seed: int, device, sampler_kwargs: dict):
        self.config, self.seed, self.device = config, int(seed), torch.device(device)
        self.val_sampler = ChunkSampler(val_data, config.chunk_len, config.discount, seed=0, **sampler_kwargs)
        self.seq_sampler = ChunkSampler(train_data, config.chunk_len, config.discount, seed=0,
                                        **sampler_kwargs)
        self.rollout_chunks = max(1, min(ROLLOUT_ENV_STEPS // config.chunk_len,
                                         self.seq_sampler.max_sequence_chunks()))

    def _streams(self, step: int, kind: int):
        return [self.seed % 2 ** 32, int(step), kind]

    def compute(self, agent, train_batch: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        with forked_rng(self.device):
            torch.manual_seed(self.seed + DIAG_SEED_OFFSET + int(step))
            self.val_sampler.reseed(self._streams(step, 1))
            self.seq_sampler.reseed(self._streams(step, 2))
            bc = agent.bc_error(train_batch)
            seq = to_device(self.seq_sampler.sample_sequences(ROLLOUT_SEQUENCES, self.rollout_chunks),
                            self.device)
            model_err = agent.rollout_error(seq["observations"], seq["actions"]).tolist()
            val = agent.eval_losses(to_device(self.val_sampler.sample(self.config.batch_size), self.device))
        h = self.config.chunk_len
        out = {"metrics/mse": bc}
        out.update({f"metrics/rollout/mse_{k * h}": float(e) for k, e in enumerate(model_err)})
        out.update({f"val/{k}": v for k, v in val.items()})
        return out
