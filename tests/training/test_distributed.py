"""``torchrun --nproc_per_node 2 pathoucc train``: DistributedDataParallel over gloo on the CPU (2 processes).

The 2-rank run is checked against one process doing the same arithmetic: at step 0, rank r draws the bags of
sampler seed ``seed + 1000 r``; DDP averages the two ranks' gradients, which equals the gradient of the mean of
the two losses. The reference runs the training step itself (``ucc_step``) once, from the same initial weights,
on both ranks' bags, through a module that stands for the two ranks (each rank's half of the batch encoded on
its own, as on its rank) so that the step's mean loss is the mean of the two ranks' losses. Tolerances: the logged
step-1 loss (averaged over the ranks) within 1e-6 absolute, the weights after step 1 within 1e-6 absolute (gloo's
all-reduce sums in another order than autograd does; Adam's first step moves each weight by about lr = 1e-3).
Batch-norm running statistics are not compared (DDP keeps rank 0's).
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
from slide_fixtures import CELL
from torch import nn

from pathoucc.config import config_from_dict
from pathoucc.data.bags import create_bag_sampler
from pathoucc.data.loader import StepDataset
from pathoucc.data.sources import load_pools
from pathoucc.errors import PathouccError
from pathoucc.run import CHECKPOINT, REFINE_CHECKPOINT, read_weights, snapshot_path
from pathoucc.slides.tiler import tile_slide
from pathoucc.training.distributed import rank_seed
from pathoucc.training.train import prepare_ucc, train_ucc, ucc_step

TORCHRUN = Path(sys.executable).parent / "torchrun"


def _torchrun(*args: str) -> subprocess.CompletedProcess:
    assert TORCHRUN.exists(), f"torchrun (installed with torch) missing beside {sys.executable}"
    return subprocess.run([str(TORCHRUN), "--standalone", "--nproc_per_node", "2", "-m", "pathoucc.cli", *args],
                          capture_output=True, text=True, timeout=300, env=os.environ | {"OMP_NUM_THREADS": "1"})


class _TwoRanks(nn.Module):
    """Two ranks in one process: the first ``instances`` instances and ``bags`` bags of a batch are rank 0's, the
    rest rank 1's; each goes through the model on its own (its own batch-norm statistics) and the outputs are
    concatenated, so a mean over the batch's bags (and, with equal halves, its instances) is the ranks' mean."""

    def __init__(self, model: nn.Module, instances: int, bags: int) -> None:
        super().__init__()
        self.model, self.instances, self.bags = model, instances, bags

    def forward(self, x: torch.Tensor, members: torch.Tensor, mask: torch.Tensor, chunk: int = 0) -> dict:
        m, b = self.instances, self.bags
        outs = [self.model(x[:m], members[:b], mask[:b], chunk), self.model(x[m:], members[b:] - m, mask[b:], chunk)]
        return {key: torch.cat([out[key] for out in outs]) for key in outs[0]}


def test_two_gloo_ranks_train_one_run_folder_like_one_process(tmp_path: Path, tiny_config: dict) -> None:
    tiny_config["train"] |= {"steps": 3, "snapshot_every": 1, "checkpoint_every": 3, "val_every": 3, "amp": False,
                             "num_threads": 1}
    cfg_path, run = tmp_path / "tiny.yaml", tmp_path / "run"
    cfg_path.write_text(yaml.safe_dump(tiny_config))
    proc = _torchrun("train", str(cfg_path), "--out", str(run))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("clustering") == 1  # only rank 0 evaluates
    state = torch.load(run / CHECKPOINT, weights_only=True)
    assert state["step"] == 3 and state["world_size"] == 2
    assert (run / "model.pt").is_file() and (run / "metrics.json").is_file()
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]  # written once, by rank 0

    # the reference: one process, both ranks' bags of step 0 in one batch, one training step
    cfg = config_from_dict(tiny_config)
    training = prepare_ucc(cfg, load_pools(cfg.data, ("train", "val")))
    bags = cfg.bags
    items = [StepDataset(create_bag_sampler(training.train_pool, bags.bag_size, bags.ucc_min, bags.ucc_max,
                                            rank_seed(cfg.seed, rank), bags.instances_per_batch),
                         training.train_pool, bags.bags_per_batch)[0] for rank in (0, 1)]
    instances, bags_each = len(items[0]["images"]), len(items[0]["ucc"])
    assert (len(items[1]["images"]), len(items[1]["ucc"])) == (instances, bags_each)  # equal halves
    batch = {key: torch.cat([items[0][key], items[1][key]]) for key in ("images", "mask", "ucc", "low")}
    batch |= {"step": 0, "members": torch.cat([items[0]["members"], items[1]["members"] + instances])}
    model = training.state.modules["model"]
    training.state.net = _TwoRanks(model, instances, bags_each)
    terms = ucc_step(training.state, batch, cfg)
    assert records[0]["lr"] == pytest.approx(terms["lr"])  # the schedule's lr at step 0, on both sides
    assert records[0]["ucc_loss"] == pytest.approx(float(terms["ucc_loss"]), abs=1e-6)
    after_one = torch.load(snapshot_path(run, 1), weights_only=True)["model"]
    for name, p in model.named_parameters():
        torch.testing.assert_close(after_one[name], p.detach(), rtol=0, atol=1e-6, msg=name)

    # resuming with another number of processes is refused, naming the checkpoint
    with pytest.raises(PathouccError, match=r"checkpoint\.pt: the checkpoint was written by 2 training process"):
        train_ucc(cfg, run, resume=True, progress=False)


def test_two_gloo_ranks_refine_through_the_same_loop(tmp_path: Path, digit_slide) -> None:
    """`pathoucc train` with refine.steps under torchrun: both ranks train, then fine-tune on their own patches
    (DDP), rank 0 alone writes the refinement's log, summary and model, and scores the run once."""
    tiles = tile_slide(digit_slide["slide"], tmp_path / "tiles", patch_size=CELL, stride=CELL, level=0,
                       region_size=4 * CELL, annotations=digit_slide["mask"], workers=1)
    cfg_path, run = tmp_path / "slides.yaml", tmp_path / "run"
    cfg_path.write_text(yaml.safe_dump({
        "seed": 0, "data": {"source": "tiles", "train_tiles": [str(tiles)], "test_tiles": [str(tiles)],
                            "val_fraction": 0.2},
        "bags": {"bag_size": 4, "bags_per_batch": 2, "ucc_min": 1, "ucc_max": 4},
        "model": {"backbone": "conv", "widths": [8], "in_chans": 3, "input_size": CELL, "num_features": 4,
                  "mlp": [4]},
        "train": {"steps": 2, "val_every": 2, "checkpoint_every": 2, "log_every": 2, "val_bags": 2, "amp": False,
                  "num_threads": 1},
        "eval": {"k": 10, "n_init": 1}, "refine": {"steps": 4, "batch_size": 16},
    }))
    proc = _torchrun("train", str(cfg_path), "--out", str(run))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("refined: 1 round(s) of 4 steps") == 1 and proc.stdout.count("clustering") == 1
    records = [json.loads(x) for x in (run / "refine.jsonl").read_text().splitlines()]
    assert [(r["round"], r["step"]) for r in records] == [(1, 2), (1, 4)]  # written once, by rank 0
    assert read_weights(run / CHECKPOINT)["world_size"] == 2 and not (run / REFINE_CHECKPOINT).exists()
    ucc, refined = read_weights(run / "model-ucc.pt")["model"], read_weights(run / "model.pt")["model"]
    assert not torch.equal(ucc["head.weight"], refined["head.weight"])  # the features were fine-tuned
    assert torch.equal(ucc["classifier.0.weight"], refined["classifier.0.weight"])  # the count head was not


def test_two_gloo_ranks_train_with_the_invariance_term(tmp_path: Path, tiny_config: dict) -> None:
    """loss.iic_weight under DDP: the cluster head and the copy's features are used outside DDP's forward, in the
    same backward; both ranks step and the head is trained."""
    tiny_config["train"] |= {"steps": 2, "checkpoint_every": 2, "val_every": 2, "amp": False, "num_threads": 1}
    tiny_config["model"] |= {"decoder": False, "iic_clusters": 4}
    tiny_config["loss"] = {"ucc_weight": 1.0, "ae_weight": 0.0, "iic_weight": 1.0, "iic_instances": 8}
    cfg_path, run = tmp_path / "tiny.yaml", tmp_path / "run"
    cfg_path.write_text(yaml.safe_dump(tiny_config))
    proc = _torchrun("train", str(cfg_path), "--out", str(run))
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if "iic_loss" in line]
    assert len(records) == 2 and all(r["iic_loss"] <= 1e-6 for r in records)
    state = torch.load(run / CHECKPOINT, weights_only=True)
    assert state["world_size"] == 2 and "cluster_head.weight" in state["model"]
