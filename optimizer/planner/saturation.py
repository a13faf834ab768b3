"""What a node would waste once it is full: the ``stowage`` policy's measure.

In the fill experiment, as in a busy cluster, nodes are not left half used: pods keep
arriving until nothing more fits, and what is still free then is lost. So the question for
a placement is not "how much of this node could the *next* pod not use" (FGD's F) but "how
much of this node will be unusable once it is full". :class:`SaturationModel` estimates that
by rollouts: it replays a few fixed random sequences of the workload's typical shapes on the
node state, placing every pod that fits (a share on the GPU it fills best, whole GPUs on the
lowest-numbered free ones) and skipping those that do not, and averages the free GPU milli
left at the end. The same sequences serve every state (common random numbers), so two
states' estimates differ by their states, not by luck.

Shapes are drawn in proportion to their frequency times the square root of one plus the GPUs
they ask for: the geometric mean of drawing by pod count (what arrives) and by GPU volume
(what the allocation is made of). By count alone, the 4- and 8-GPU pods that carry a third
or half of some workloads' GPU request are too rare in 25 draws; by volume alone, the
frequent small pods are (measured in docs/benchmarks.md, "stowage's rollouts").

Within a sequence, pods asking for several whole GPUs come first: near the end of a fill the
pods that still find room are the small ones, while a multi-GPU pod fits only where whole
GPUs were kept together, so a node that can still take one is valued as if one will come.
For the same reason the rollouts are best given every multi-GPU shape of the workload, however
rare (see :func:`.typical_shapes`).

Estimates are memoised by node state (CPU, GPU model, the multiset of per-GPU free milli);
a node state recurs often across a run, so most placements need only a few new rollouts.
"""

from __future__ import annotations

from typing import Final

import numpy as np

from optimizer.planner.cluster import FULL, IntArray, take_whole_gpus
from optimizer.planner.fragmentation import FloatArray, Shape, accepted_models, distinct_states

#: Rollouts per state and pods drawn per rollout; measured on the openb traces (see
#: docs/benchmarks.md): 8 x 25 decides as well as 16 or 32 rollouts or a horizon of 40, at
#: less cost, and a horizon of 15 is too short to fill a node.
ROLLOUTS: Final = 8
HORIZON: Final = 25
#: The memo is cleared past this many states, so a long-lived optimizer does not grow.
MAX_CACHED: Final = 500_000
_NO_ROOM: Final = np.iinfo(np.int64).max


class SaturationModel:
    """Expected free GPU milli of node states once random workload pods stop fitting.

    Args:
        shapes: the workload's typical shapes (their weights are the draw probabilities).
        models: the cluster's GPU model names, indexed by model id.
        seed: seeds the rollout sequences; the same seed gives the same estimates.
    """

    def __init__(
        self,
        shapes: list[Shape],
        models: list[str],
        *,
        rollouts: int = ROLLOUTS,
        horizon: int = HORIZON,
        seed: int = 0,
    ) -> None:
        if not shapes:
            raise ValueError("a saturation model needs at least one shape")
        weights = np.array([s.weight for s in shapes]) * np.sqrt(
            [1.0 + s.num_gpu * (s.gpu_milli if s.num_gpu else 0) / FULL for s in shapes]
        )
        draws = np.random.default_rng(seed).choice(
            len(shapes), size=(rollouts, horizon), p=weights / weights.sum()
        )
        gpus_first = np.array([max(s.num_gpu, 1) for s in shapes])
        self.sequences: IntArray = np.array(
            [row[np.argsort(-gpus_first[row], kind="stable")] for row in draws]
        )
        self.cpu = np.array([s.cpu_milli for s in shapes], dtype=np.int64)
        self.num_gpu = np.array([s.num_gpu for s in shapes], dtype=np.int64)
        self.milli = np.array([s.gpu_milli if s.num_gpu else 0 for s in shapes], dtype=np.int64)
        self.is_share = (self.num_gpu == 1) & (self.milli < FULL)
        self.model_ok = accepted_models(shapes, models)
        self._cache: dict[bytes, float] = {}

    def waste(self, cpu_free: IntArray, gpu_free: IntArray, model_id: IntArray) -> FloatArray:
        """Estimated free GPU milli left on each row's node state once it is full."""
        distinct, inverse = distinct_states(cpu_free, gpu_free, model_id)
        values = np.empty(len(distinct))
        missing: list[int] = []
        for row, key in enumerate(map(np.ndarray.tobytes, distinct)):
            known = self._cache.get(key)
            if known is None:
                missing.append(row)
            else:
                values[row] = known
        if missing:
            if len(self._cache) + len(missing) > MAX_CACHED:
                self._cache.clear()
            todo = distinct[missing]
            values[missing] = self._rollouts(todo[:, 0], todo[:, 2:], todo[:, 1])
            self._cache.update(
                zip(map(np.ndarray.tobytes, todo), values[missing].tolist(), strict=True)
            )
        result: FloatArray = values[inverse]
        return result

    def _rollouts(self, cpu_free: IntArray, gpu_free: IntArray, model_id: IntArray) -> FloatArray:
        """Play every sequence on every state at once; mean free milli per state."""
        states, count = len(cpu_free), len(self.sequences)
        cpu = np.repeat(cpu_free, count)
        gpu = np.repeat(gpu_free, count, axis=0)
        model = np.repeat(model_id, count)
        sequences = np.tile(self.sequences, (states, 1))
        rows = np.arange(len(cpu))
        for step in range(sequences.shape[1]):
            shape = sequences[:, step]
            milli, share, num_gpu = self.milli[shape], self.is_share[shape], self.num_gpu[shape]
            room = gpu >= milli[:, None]
            whole = gpu == FULL
            gpu_fits = np.where(share, room.any(axis=1), whole.sum(axis=1) >= num_gpu)
            fits = (
                (cpu >= self.cpu[shape]) & gpu_fits & (self.model_ok[shape, model] | (num_gpu == 0))
            )
            cpu -= np.where(fits, self.cpu[shape], 0)
            shared = fits & share
            tightest = np.argmin(np.where(room, gpu, _NO_ROOM), axis=1)
            gpu[rows[shared], tightest[shared]] -= milli[shared]
            takes_whole = fits & ~share & (num_gpu > 0)
            if takes_whole.any():
                take_whole_gpus(gpu, np.where(takes_whole, num_gpu, 0))
        left: FloatArray = gpu.sum(axis=1).reshape(states, count).mean(axis=1)
        return left
