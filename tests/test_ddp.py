"""torchrun data parallelism of the one training loop (``fewsam.distributed.ddp``).

The loop runs under a real ``torchrun --nproc-per-node 2`` (gloo) on toy tasks: N processes with a
global batch B reach the weights of one process with batch B (each rank computes B/N samples);
ranks start from rank 0's model even when they built different ones; batch-norm statistics stay
equal on every rank; only rank 0 writes; and a run stopped at a checkpoint resumes exactly
(slow: two more launches). tests/test_ddp_fit.py runs ``fewsam fit`` itself under torchrun.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from fewsam.distributed import ddp
from fewsam.errors import FewsamError

TORCHRUN = Path(sys.executable).with_name("torchrun")

# Run as `python toy.py OUT` (one process) or under torchrun (two): fits toy tasks with the loop
# and saves each rank's final state. Rank r seeds its model with 123 + r, so rank 1 starts from
# other weights unless the loop hands it rank 0's.
TOY = textwrap.dedent('''
    import atexit, json, os, sys
    from pathlib import Path
    import numpy as np, torch
    from torch import nn
    import torch.distributed as dist
    from fewsam.distributed import local_part
    from fewsam.train import TrainConfig, train

    out = Path(sys.argv[1])
    rank = int(os.environ.get("RANK", "0"))
    if "WORLD_SIZE" in os.environ:
        dist.init_process_group("gloo")
        # as fewsam's own launch does: a process leaving with its gloo group alive can abort
        # ("terminate called without an active exception") when the other rank ends first
        atexit.register(dist.destroy_process_group)

    class Toy:
        def __init__(self, norm, batch):
            torch.manual_seed(123 + rank)
            mid = nn.BatchNorm1d(8) if norm else nn.Tanh()
            self.module, self.batch = nn.Sequential(nn.Linear(3, 8), mid, nn.Linear(8, 1)), batch
            gen = torch.Generator().manual_seed(7)
            self.x = torch.randn(64, 3, generator=gen)
            self.y = torch.sin(self.x @ torch.tensor([[1.0], [-2.0], [0.5]]))

        def training_loss(self, rng, step):
            idx = rng.choice(64, self.batch, replace=False)
            idx = idx[local_part(len(idx))]
            return ((self.module(self.x[idx]) - self.y[idx]) ** 2).mean(), {}

        def validate(self):
            return {"score": -float(((self.module(self.x) - self.y) ** 2).mean())}

    class Stop(Exception):
        pass

    def stop_at(step):
        if step == int(os.environ.get("STOP_AT", "0")):
            raise Stop

    cfg = TrainConfig(steps=30, lr=0.05, optimizer="adamw", val_every=10, warmup_steps=2, seed=3, ema=0.9)
    for name, norm, batch in [("mlp", False, 8), ("odd", False, 7), ("norm", True, 8)]:
        task = Toy(norm, batch)
        run = out / f"{name}-rank{rank}" if os.environ.get("RUN_PER_RANK") else out / name
        try:
            train(task, cfg, run, show_progress=False, on_checkpoint=stop_at)
        except Stop:
            sys.exit(3)
        torch.save(task.module.state_dict(), out / f"{name}.state{rank}.pt")
    if dist.is_initialized():
        dist.barrier()  # both ranks done before either tears its group down
''')


def launch(args: list[str], out: Path, **env: str) -> subprocess.CompletedProcess:
    """Run ``args`` in ``out`` as a user would, one thread per process, gloo on the loopback interface."""
    environ = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    environ.update(FEWSAM_NO_REEXEC="1", OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo", **env)
    return subprocess.run(args, cwd=out, env=environ, capture_output=True, text=True, timeout=600)


def torchrun_args(nproc: int = 2) -> list[str]:
    """torchrun on this machine alone, on the loopback interface (GLOO_SOCKET_IFNAME=lo in ``_run``)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return [str(TORCHRUN), "--nproc-per-node", str(nproc), "--master-addr", "127.0.0.1", "--master-port", str(port)]


def _torchrun(script: Path, out: Path, **env: str) -> subprocess.CompletedProcess:
    return launch([*torchrun_args(), str(script), str(out)], out, **env)


def _state(folder: Path, name: str, rank: int = 0) -> dict[str, torch.Tensor]:
    return torch.load(folder / f"{name}.state{rank}.pt", weights_only=True)


def _losses(run: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (run / "fit_log.jsonl").read_text().splitlines()) if "loss" in r]


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ddp")
    (root / "toy.py").write_text(TOY)
    return root


@pytest.fixture(scope="module")
def toy_runs(toy):
    """The toy fits in one process and under torchrun with 2 ranks (rank 1 in a folder of its own,
    to see what it writes)."""
    runs = {name: toy / name for name in ("single", "ddp")}
    for folder in runs.values():
        folder.mkdir()
    single = launch([sys.executable, str(toy / "toy.py"), str(runs["single"])], runs["single"])
    assert single.returncode == 0, single.stderr
    both = _torchrun(toy / "toy.py", runs["ddp"], RUN_PER_RANK="1")
    assert both.returncode == 0, both.stderr[-3000:]
    return runs


def test_two_ranks_reach_the_single_process_weights(toy_runs):
    single, ddp_state = _state(toy_runs["single"], "mlp"), _state(toy_runs["ddp"], "mlp")
    for name in single:  # 30 AdamW steps: only the order of float additions differs
        torch.testing.assert_close(ddp_state[name], single[name], rtol=1e-5, atol=1e-6)
    moved = max(float((single[k] - _init(k)).abs().max()) for k in single)
    assert moved > 1e-2  # the tolerance is far below how far the weights travelled
    logged, reference = _losses(toy_runs["ddp"] / "mlp-rank0"), _losses(toy_runs["single"] / "mlp")
    assert logged == pytest.approx(reference, rel=1e-5)  # the logged loss is the whole batch's


def _init(name: str) -> torch.Tensor:
    torch.manual_seed(123)
    from torch import nn

    return nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1)).state_dict()[name]


def test_an_uneven_batch_is_computed_whole_by_every_rank(toy_runs):
    single, ddp_state = _state(toy_runs["single"], "odd"), _state(toy_runs["ddp"], "odd")
    for name in single:
        torch.testing.assert_close(ddp_state[name], single[name], rtol=1e-6, atol=1e-7)


def test_ranks_hold_one_model_batch_norm_included(toy_runs):
    for name in ("mlp", "norm"):
        rank0, rank1 = _state(toy_runs["ddp"], name, 0), _state(toy_runs["ddp"], name, 1)
        assert all(torch.equal(rank0[k], rank1[k]) for k in rank0), name  # rank 1 was seeded differently
    # Each rank normalises its 4 samples by their own statistics: not the single process's numbers
    # (30 steps at lr 0.05 on 4 vs 8 samples part ways), but the fit learns as well.
    scores = [r["validation"]["score"] for r in map(json.loads, (toy_runs["ddp"] / "norm-rank0" /
                                                                  "fit_log.jsonl").read_text().splitlines())
              if "validation" in r]
    assert scores[-1] > scores[0]


def test_only_rank_0_writes_the_run_folder(toy_runs):
    written = {p.name for p in (toy_runs["ddp"] / "mlp-rank0").iterdir()}
    assert {"fit_log.jsonl", "checkpoint_best.pt", "checkpoint_last.pt"} <= written
    assert not any((toy_runs["ddp"] / "mlp-rank1").iterdir())


@pytest.mark.slow
def test_a_stopped_run_resumes_to_the_same_weights(toy, toy_runs):
    """Both ranks stop at the step-20 checkpoint (the job fails), the relaunch resumes from it."""
    resumed = toy / "resumed"
    resumed.mkdir()
    stopped = _torchrun(toy / "toy.py", resumed, STOP_AT="20")
    assert stopped.returncode != 0 and not (resumed / "mlp.state0.pt").exists(), stopped.stderr[-3000:]
    again = _torchrun(toy / "toy.py", resumed)
    assert again.returncode == 0, again.stderr[-3000:]
    for name in ("mlp", "odd", "norm"):
        straight, state = _state(toy_runs["ddp"], name), _state(resumed, name)
        assert all(torch.equal(straight[k], state[k]) for k in straight), name
    assert _losses(resumed / "mlp") == _losses(toy_runs["ddp"] / "mlp-rank0")


# --- without a process group -------------------------------------------------------------------

def test_alone_a_process_computes_whole_batches(monkeypatch):
    assert ddp.world() == (0, 1) and ddp.is_main() and ddp.local_part(8) == slice(0, 8)


@pytest.mark.parametrize("rank,n,expected", [(0, 8, slice(0, 4)), (1, 8, slice(4, 8)), (1, 7, slice(0, 7)),
                                             (0, 1, slice(0, 1))])
def test_local_part_splits_even_batches_only(monkeypatch, rank, n, expected):
    monkeypatch.setattr(ddp, "world", lambda: (rank, 2))
    assert ddp.local_part(n) == expected


def test_torchrun_environment_is_read_and_checked():
    assert ddp.launch_env({}) is None and ddp.launch_env({"WORLD_SIZE": "1", "RANK": "0"}) is None
    launch = ddp.launch_env({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"})
    assert launch == ddp.Launch(3, 4, 1, 2)
    with pytest.raises(FewsamError, match="whole numbers"):
        ddp.launch_env({"WORLD_SIZE": "two"})
    with pytest.raises(FewsamError, match="outside a world of 2"):
        ddp.launch_env({"WORLD_SIZE": "2", "RANK": "2"})


def test_each_rank_gets_its_own_gpu_and_one_gpu_for_all_is_refused():
    launch = ddp.Launch(rank=3, world_size=4, local_rank=1, local_world_size=2)
    assert ddp.rank_device("cuda", launch) == "cuda:1" and ddp.rank_device("cpu", launch) == "cpu"
    with pytest.raises(FewsamError, match="pass --device cuda"):
        ddp.rank_device("cuda:0", launch)
    assert ddp.rank_device("cuda:0", ddp.Launch(1, 2, 0, 1)) == "cuda:0"  # one process per node
