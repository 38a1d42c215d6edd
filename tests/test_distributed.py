"""``torchrun --nproc_per_node 2 pathoucc train``: DistributedDataParallel over gloo on the CPU (2 processes).

The 2-rank run is checked against one process doing the same arithmetic: at step 0, rank r draws the bags of
sampler seed ``seed + 1000 r``; DDP averages the two ranks' gradients, which equals the gradient of the mean of
the two losses. The reference computes both losses in this process from the same initial weights, averages them,
and takes one Adam step. Tolerances: the logged step-1 loss (averaged over the ranks) within 1e-6 absolute, the
weights after step 1 within 1e-6 absolute (gloo's all-reduce sums in another order than autograd does; Adam's first
step moves each weight by about lr = 1e-3). Batch-norm running statistics are not compared (DDP keeps rank 0's).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from pathoucc.config import config_from_dict
from pathoucc.data.bags import create_bag_sampler
from pathoucc.data.loader import StepDataset
from pathoucc.data.sources import load_pools
from pathoucc.distributed import rank_seed
from pathoucc.errors import PathouccError
from pathoucc.run import CHECKPOINT, snapshot_path
from pathoucc.train import Trainer, lr_factor, train_run, ucc_loss_terms

TORCHRUN = Path(sys.executable).parent / "torchrun"


def test_two_gloo_ranks_train_one_run_folder_like_one_process(tmp_path: Path, tiny_config: dict) -> None:
    assert TORCHRUN.exists(), f"torchrun (installed with torch) missing beside {sys.executable}"
    tiny_config["train"] |= {"steps": 3, "snapshot_every": 1, "checkpoint_every": 3, "val_every": 3, "amp": False,
                             "num_threads": 1}
    cfg_path, run = tmp_path / "tiny.yaml", tmp_path / "run"
    cfg_path.write_text(yaml.safe_dump(tiny_config))
    proc = subprocess.run([str(TORCHRUN), "--standalone", "--nproc_per_node", "2", "-m", "pathoucc.cli", "train",
                           str(cfg_path), "--out", str(run)], capture_output=True, text=True, timeout=300,
                          env=os.environ | {"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("clustering") == 1  # only rank 0 evaluates
    state = torch.load(run / CHECKPOINT, weights_only=True)
    assert state["step"] == 3 and state["world_size"] == 2
    assert (run / "model.pt").is_file() and (run / "metrics.json").is_file()
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]  # written once, by rank 0

    # the reference: one process, both ranks' bags of step 0, the mean of their losses, one Adam step
    cfg = config_from_dict(tiny_config)
    trainer = Trainer(cfg, tmp_path, load_pools(cfg.data, ("train", "val")))
    b = cfg.bags
    items = [StepDataset(create_bag_sampler(trainer.train_pool, b.bag_size, b.ucc_min, b.ucc_max,
                                            rank_seed(cfg.seed, rank), b.instances_per_batch),
                         trainer.train_pool, b.bags_per_batch)[0] for rank in (0, 1)]
    trainer.model.train()
    terms = [ucc_loss_terms(trainer.model, *trainer._tensors(item)[:4], cfg) for item in items]
    mean_loss = float((terms[0]["ucc_loss"] + terms[1]["ucc_loss"]).detach()) / 2
    assert records[0]["ucc_loss"] == pytest.approx(mean_loss, abs=1e-6)
    for group in trainer.optimizer.param_groups:
        group["lr"] = cfg.train.lr * lr_factor(cfg, 0)
    trainer.optimizer.zero_grad()
    ((terms[0]["loss"] + terms[1]["loss"]) / 2).backward()
    trainer.optimizer.step()
    after_one = torch.load(snapshot_path(run, 1), weights_only=True)["model"]
    for name, p in trainer.model.named_parameters():
        torch.testing.assert_close(after_one[name], p.detach(), rtol=0, atol=1e-6, msg=name)

    # resuming with another number of processes is refused, naming the checkpoint
    with pytest.raises(PathouccError, match=r"checkpoint\.pt: the checkpoint was written by 2 training process"):
        train_run(cfg, run, resume=True, progress=False)
