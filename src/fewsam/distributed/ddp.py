"""torchrun data parallelism for the one training loop (``fewsam.train``).

``torchrun --nproc-per-node N -m fewsam fit METHOD ...`` starts N copies of the same fit. Each
opens the same data with the same seed, so the random generators of all ranks stay equal: every
step, every rank draws the same global batch and the same augmentations, keeps its own contiguous
share of it (``local_part``) for the forward and backward pass, and the loop averages the
gradients over the ranks (``average_gradients``) before the optimiser steps. For a loss that is a
mean over the batch's samples, the mean of the shares' gradients is the whole batch's gradient:
N processes with B/N samples each reach the weights of one process with batch B, up to the order
of floating-point additions. A batch that does not split evenly is computed whole by every rank:
still exact, just not faster.

Two things are not per-sample means, and make a run differ slightly from one process. Batch
normalisation (the student U-Net) normalises each share with its own statistics; the running
statistics are averaged over the ranks after each step, so every rank keeps the same model. And a
cross-entropy that ignores pixels (padding of non-square slices) divides by each share's own count.

Rank 0 owns the run folder: it locks and prepares it, validates, writes checkpoints, the fit log
and the other run files, and shows progress; the other ranks receive its validation metrics. A
checkpoint is every rank's state (their generators are equal), so a killed run resumes exactly when
relaunched with the same number of processes.

Why an explicit all_reduce and not ``DistributedDataParallel``: the tasks call their module
directly, SAM-Match twice a step (once without gradients); the few-shot decoder leaves parts of
SAM's decoder unused (DDP would need ``find_unused_parameters``); a DDP wrapper renames every
weight of a checkpoint. One flat all_reduce after backward gives the same average without any of
that; DDP's gain, overlapping the reduction with the backward pass, is small at these model sizes
(docs/scaling.md).
"""

from __future__ import annotations

import os
from collections import defaultdict
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, TypeVar

from fewsam.errors import FewsamError

if TYPE_CHECKING:
    from torch import Tensor, nn

    from fewsam.config import FitOptions

T = TypeVar("T")
# A collective waits this long for the slowest rank: embedding an uncached labelled set or a long
# validation on rank 0 must not look like a dead peer.
TIMEOUT = timedelta(hours=2)


@dataclass(frozen=True)
class Launch:
    """Where torchrun put this process: its global rank, the world size, its rank on this node."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int


def launch_env(environ: Mapping[str, str] | None = None) -> Launch | None:
    """The torchrun launch this process belongs to (from WORLD_SIZE / RANK / LOCAL_RANK), or None for
    a process on its own; a world of one is a process on its own too."""
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" not in env:
        return None
    try:
        world_size = int(env["WORLD_SIZE"])
        rank, local_rank = int(env.get("RANK", "0")), int(env.get("LOCAL_RANK", "0"))
        local_world = int(env.get("LOCAL_WORLD_SIZE", str(world_size)))
    except ValueError:
        raise FewsamError("WORLD_SIZE, RANK and LOCAL_RANK must be whole numbers (as torchrun sets them), not "
                          f"{env.get('WORLD_SIZE')!r}, {env.get('RANK')!r}, {env.get('LOCAL_RANK')!r}") from None
    if world_size <= 1:
        return None
    if not 0 <= rank < world_size:
        raise FewsamError(f"RANK {rank} is outside a world of {world_size} processes")
    return Launch(rank, world_size, local_rank, local_world)


def launched_rank() -> int:
    """This process's rank as torchrun launched it (0 on its own), readable before and after the
    process group exists: the command line reports a fit's outcome on rank 0 only."""
    launch = launch_env()
    return 0 if launch is None else launch.rank


def world() -> tuple[int, int]:
    """(rank, world size) of the running process group; (0, 1) when there is none."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """Whether this process writes the run folder and shows progress (rank 0, or a process on its own)."""
    return world()[0] == 0


def local_part(n: int) -> slice:
    """This rank's contiguous share of a global batch of ``n`` samples. The whole batch outside
    torchrun, and also when ``n`` does not split evenly: every rank then computes all of it, which
    keeps the gradient average exact (unequal shares would weigh their samples unequally)."""
    rank, size = world()
    if size == 1 or n % size:
        return slice(0, n)
    share = n // size
    return slice(rank * share, (rank + 1) * share)


def rank_device(device: str, launch: Launch) -> str:
    """The device of this rank: ``cuda`` means one GPU per process (cuda:LOCAL_RANK). One GPU named for
    several processes of a node is refused: NCCL cannot run two ranks on one GPU."""
    if device == "cuda":
        return f"cuda:{launch.local_rank}"
    if device.startswith("cuda:") and launch.local_world_size > 1:
        raise FewsamError(f"--device {device} under torchrun with {launch.local_world_size} processes per node "
                          "would put every process on one GPU; pass --device cuda (process i uses cuda:i)")
    return device


@contextmanager
def distributed_fit(options: FitOptions) -> Iterator[FitOptions]:
    """The options of this process's part of a fit. Outside torchrun: ``options`` as given, nothing
    else happens. Under torchrun: the process group is up (gloo on CPU, NCCL on GPUs) for the
    duration, the device is this rank's, and progress shows on rank 0 only."""
    launch = launch_env()
    if launch is None:
        yield options
        return
    import torch
    import torch.distributed as dist

    device = rank_device(options.device, launch)
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    ours = not dist.is_initialized()  # a caller's own group (a script under torchrun) is left to it
    if ours:
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo", timeout=TIMEOUT)
    try:
        yield replace(options, device=device, show_progress=options.show_progress and launch.rank == 0)
    finally:
        if ours:
            dist.destroy_process_group()


class _Follower:
    """The run folder as a rank other than 0 sees it: rank 0 locks and prepares it; this rank waits
    for that (or is stopped by torchrun when rank 0 fails) and then uses the prepared folder."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.finished = False

    def prepare(self, config: dict[str, Any], defaults: dict[str, Any] | None = None) -> Path:
        from fewsam.runs import MANIFEST

        from_main(lambda: None)  # rank 0's prepared folder, or the refusal it met, raised here too
        # rank 0 has removed the manifest of an unfinished run and writes one only after the last barrier
        self.finished = (self.path / MANIFEST).exists()
        return self.path


class _Leader:
    """Rank 0's run folder: ``RunFolder.prepare``, then the other ranks may go on."""

    def __init__(self, folder: Any) -> None:
        self.folder = folder

    @property
    def finished(self) -> bool:
        """Whether the run had finished before this fit (``RunFolder.finished``)."""
        return self.folder.finished

    def prepare(self, config: dict[str, Any], defaults: dict[str, Any] | None = None) -> Path:
        return from_main(lambda: self.folder.prepare(config, defaults))


@contextmanager
def run_folder(path: str | Path) -> Iterator[Any]:
    """``RunFolder(path)`` for a fit: owned by rank 0 under torchrun. A fit that ends well waits for
    every rank before rank 0 seals the folder with its manifest; a failing rank raises at once
    (torchrun then stops the others: no rank waits forever for a peer that is gone)."""
    from fewsam.runs import RunFolder

    if world()[1] == 1:
        with RunFolder(path) as folder:
            yield folder
        return
    if is_main():
        with ExitStack() as stack:
            opened: list[Any] = []
            from_main(lambda: opened.append(stack.enter_context(RunFolder(path))))  # a held lock: every rank stops
            yield _Leader(opened[0])
            barrier()
        return
    from_main(lambda: None)
    yield _Follower(Path(path))
    barrier()


def barrier() -> None:
    """Wait for every rank (nothing to wait for outside torchrun)."""
    if world()[1] > 1:
        import torch.distributed as dist

        dist.barrier()


def from_main(compute: Callable[[], T]) -> T:
    """``compute()`` on rank 0, its result on every rank: validation runs once, and every rank takes
    the same model-selection decision from the same metrics. A user error rank 0 meets (a run folder
    that holds another run, or is locked by another fit) is raised on every rank, so each stops with
    it (rank 0 alone says it) instead of waiting for rank 0 and dying of the closed connection."""
    rank, size = world()
    if size == 1:
        return compute()
    import torch.distributed as dist

    box = [_outcome(compute) if rank == 0 else None]
    dist.broadcast_object_list(box, src=0)
    result, refusal = box[0]
    if refusal is not None:
        raise refusal
    return result


def _outcome(compute: Callable[[], T]) -> tuple[T | None, FewsamError | None]:
    try:
        return compute(), None
    except FewsamError as exc:
        return None, exc


def broadcast_state(module: nn.Module) -> None:
    """Every rank takes rank 0's weights and buffers: the ranks start from one model even if a
    method's initialisation drew from a generator that differs between processes."""
    if world()[1] == 1:
        return
    import torch.distributed as dist

    for tensor in module.state_dict().values():  # they share storage with the module's own
        dist.broadcast(tensor, src=0)


def average_gradients(module: nn.Module, params: list[nn.Parameter], loss: Tensor) -> float:
    """Average over the ranks, after ``loss.backward()``: the gradients of ``params`` and the
    running statistics of batch normalisation. Returns the loss to log: the mean of the ranks'
    losses, which for a per-sample mean is the whole batch's loss. On its own: ``float(loss)``."""
    if world()[1] == 1:
        return float(loss.detach())
    _materialise_missing_gradients(params)
    value = loss.detach().reshape(1).clone()
    _mean_over_ranks([p.grad for p in params if p.grad is not None] + norm_statistics(module) + [value])
    return float(value)


def norm_statistics(module: nn.Module) -> list[Tensor]:
    """The running mean and variance of every batch-norm layer: the only buffers a step changes."""
    from torch.nn.modules.batchnorm import _NormBase

    return [t for m in module.modules() if isinstance(m, _NormBase)
            for t in (m.running_mean, m.running_var) if t is not None]


def _materialise_missing_gradients(params: list[nn.Parameter]) -> None:
    """A parameter without a gradient on this rank but with one on another gets a zero gradient, so
    that every rank reduces the same tensors; one that no rank used keeps None (the optimiser then
    skips it, as a single process would)."""
    import torch
    import torch.distributed as dist

    if not params:
        return
    present = torch.tensor([p.grad is not None for p in params], dtype=torch.int32, device=params[0].device)
    dist.all_reduce(present, op=dist.ReduceOp.MAX)
    for p, anywhere in zip(params, present.tolist()):
        if anywhere and p.grad is None:
            p.grad = torch.zeros_like(p)


def _mean_over_ranks(tensors: list[Tensor]) -> None:
    """Replace each tensor, in place, by its mean over the ranks: one all_reduce per dtype and device."""
    import torch
    import torch.distributed as dist

    size = world()[1]
    groups: dict[tuple[Any, Any], list[Tensor]] = defaultdict(list)
    for t in tensors:
        groups[(t.dtype, t.device)].append(t)
    for group in groups.values():
        flat = torch.cat([t.reshape(-1) for t in group])
        dist.all_reduce(flat)
        flat /= size
        offset = 0
        for t in group:
            t.copy_(flat[offset:offset + t.numel()].view_as(t))
            offset += t.numel()
