"""Scaling fewsam out: Ray for the embarrassingly parallel encoder work, torchrun for training.

``ddp``: ``torchrun --nproc-per-node N -m fewsam fit METHOD ...`` runs the one training loop
data-parallel (one global batch split over the ranks, gradients averaged, rank 0 writes);
``launch``: ``python -m fewsam.distributed.launch --nproc-per-node N fit METHOD ...`` starts it as
torchrun does, with a user's mistake said in one line (exit code 2).
``ray_jobs``: ``fewsam embed --ray ...`` and ``fewsam predict --ray ...`` spread cases over a Ray
cluster whose workers share the content-addressed embedding cache (``pip install fewsam[ray]``).

Nothing here imports torch.distributed or Ray until it is used: a plain ``fewsam`` command pays
for neither. docs/scaling.md says how to start a cluster and what to expect of it.
"""

from fewsam.distributed.ddp import is_main, launched_rank, local_part, world

__all__ = ["is_main", "launched_rank", "local_part", "world"]
