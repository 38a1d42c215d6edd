"""Typed options, validated once: a run's configuration (YAML files with ``a.b=value`` overrides, :class:`Config`),
how slides are tiled (:class:`TileOptions`) and how a run segments them (:class:`SegmentOptions`). Each choice is a
``Literal`` below, declared once and taken by the command line too (``--help`` lists its values)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pathoucc.config_errors import format_error
from pathoucc.errors import PathouccError
from pathoucc.files import read_yaml, write_text
from pathoucc.overrides import apply_overrides

Device = Literal["auto", "cpu", "cuda"]  # auto: cuda when available, else cpu
Split = Literal["test", "val"]  # the held-out split scored
Source = Literal["mnist", "idx", "features", "tiles"]  # where instances come from (DataConfig)
KdePool = Literal["mean", "mean+max"]  # mean+max: also each bin's largest kernel value (presence)
CountHead = Literal["kde", "presence"]  # presence: the count of present latent clusters (models.presence)
Schedule = Literal["constant", "cosine", "onecycle"]  # the learning-rate schedule
Compression = Literal["gzip", "lzf", "none"]  # of the patches in tile files


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(Section):
    """Where instances come from. ``mnist`` fetches MNIST into ``root``; ``idx`` reads the IDX files in the folder
    ``root``; ``tiles`` reads HDF5 tile files written by ``pathoucc tile``. ``val_fraction`` is the share of training
    instances (idx) or regions (tiles) held out for validation (MNIST keeps its standard last 10 000). ``augment``
    lists albumentations transforms, e.g. ``[{name: HorizontalFlip, p: 0.5}]``. ``slide_dir`` is the folder of the
    slides that CLAM/TRIDENT coordinate files among the tiles refer to (default: next to each coordinate file or up
    to two folders up). ``streaming`` (tiles only): read each step's patches from the files on demand instead of
    loading every patch into memory (the same bags and numbers either way). ``num_workers``: DataLoader processes
    preparing steps ahead of training (reading, augmenting; 0 = in the training process; 4-8 feed a GPU).
    ``labelled_fraction`` / ``labels_per_class`` (MNIST/IDX, at most one): a seeded, stratified share (or count)
    of each class of the ``train`` split whose labels name the clusters at evaluation (constrained k-means).
    ``features`` reads foundation-model feature files (TRIDENT, CLAM .h5/.pt, ``pathoucc features``; files or
    folders) for training, ``test_features`` for scoring; ``annotations`` is a count-only GeoJSON/CSV or label mask,
    or a folder of them by slide name; ``patch_size_level0`` gives the level-0 patch side of CLAM files (which do
    not record it; default: the smallest gap between their coordinates); ``region_size``: with a label mask, the bags
    are windows of this many output px (as ``pathoucc tile --region-size``). See docs/features.md."""

    source: Source = "mnist"
    root: str = "data"
    train_tiles: list[str] = Field(default_factory=list)
    test_tiles: list[str] = Field(default_factory=list)
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    augment: list[dict[str, Any]] = Field(default_factory=list)
    slide_dir: str | None = None
    streaming: bool = True
    num_workers: int = Field(0, ge=0)
    labelled_fraction: float | None = Field(None, gt=0.0, le=1.0)
    labels_per_class: int | None = Field(None, ge=1)
    features: list[str] = Field(default_factory=list)
    test_features: list[str] = Field(default_factory=list)
    annotations: str | None = None
    patch_size_level0: float | None = Field(None, gt=0)
    region_size: int = Field(512, ge=1)

    @model_validator(mode="after")
    def _one_label_share(self) -> DataConfig:
        if self.labelled_fraction is not None and self.labels_per_class is not None:
            raise ValueError("give data.labelled_fraction or data.labels_per_class, not both")
        if (self.labelled_fraction or self.labels_per_class) and self.source in ("tiles", "features"):
            raise ValueError("data.labelled_fraction / labels_per_class pick MNIST/IDX instances; for slides "
                             "pass --examples FILE to cluster or segment")
        return self


class BagsConfig(Section):
    """Bags of ``bag_size`` instances whose number of distinct classes is drawn from [ucc_min, ucc_max].

    ``instances_per_batch``: with labelled instances (MNIST, IDX), the bags of a step share this many distinct
    instances (each encoded once), so ``bags_per_batch`` can be large at little cost; unset, every bag has
    instances of its own. With regions (tiles), a step's regions hold at most this many instances in all, every
    region is one whole bag labelled with its count, and patch labels are never read (only to score).
    ``region_subsets``: each region larger than ``bag_size`` also gives this many random subsets of ``bag_size`` of
    its instances as extra bags (no extra encoder cost), labelled with the region's count as an upper bound (the
    loss asks for ``P(ucc <= count)``); validation bags stay whole regions. The bound was measured to hurt on
    count-only regions (it rewards merging classes; docs/benchmarks.md), hence 0 by default.
    ``region_unions``: each step also gives up to this many bags that join two of its regions (no extra encoder
    cost), labelled with the interval their count lies in, ``[max(c1, c2), min(c1 + c2, ucc_max)]``: many more
    distinct bags than the cohort has regions (:class:`pathoucc.data.bags.RegionBagSampler`)."""

    bag_size: int = Field(32, ge=1)
    bags_per_batch: int = Field(20, ge=1)
    instances_per_batch: int | None = Field(None, ge=1)
    region_subsets: int = Field(0, ge=0)
    region_unions: int = Field(0, ge=0)
    ucc_min: int = Field(1, ge=1)
    ucc_max: int = Field(4, ge=1)

    @model_validator(mode="after")
    def _check(self) -> BagsConfig:
        if self.ucc_max < self.ucc_min:
            raise ValueError(f"ucc_max ({self.ucc_max}) < ucc_min ({self.ucc_min})")
        if self.bag_size < self.ucc_max:
            raise ValueError(f"bag_size ({self.bag_size}) < ucc_max ({self.ucc_max})")
        return self


class ModelConfig(Section):
    """Backbone (``conv``, ``resnet``, a timm model name, or ``mlp``: the projection of feature vectors of
    ``input_dim`` values through hidden ``widths``, for ``data.source: features``; ``input_dim`` unset: taken from
    the feature files), feature head, KDE, ucc MLP and decoder. ``count_head: presence`` counts a bag as its
    number of present latent clusters (``presence_clusters`` of them; no KDE or MLP)."""

    backbone: str = "conv"
    input_dim: int | None = Field(None, ge=1)
    widths: list[int] = Field(default_factory=lambda: [32, 64, 128])
    blocks_per_stage: int = Field(1, ge=1)
    in_chans: int = Field(1, ge=1)
    input_size: int = Field(28, ge=8)
    pretrained_file: str | None = None
    num_features: int = Field(10, ge=1)
    feature_norm: bool = False
    num_bins: int = Field(11, ge=2)
    sigma: float = Field(0.1, gt=0)
    kde_pool: KdePool = "mean"
    mlp: list[int] = Field(default_factory=lambda: [384, 192])
    decoder: bool = True
    decoder_widths: list[int] = Field(default_factory=lambda: [128, 64, 32])
    decoder_residual: bool = False
    iic_clusters: int = Field(0, ge=0)
    count_head: CountHead = "kde"
    presence_clusters: int = Field(10, ge=2)

    @model_validator(mode="after")
    def _count_head_options(self) -> ModelConfig:
        fields = type(self).model_fields
        unused = [k for k in ("kde_pool", "mlp", "num_bins", "sigma") if getattr(self, k) != fields[k].get_default(
            call_default_factory=True)]
        if self.count_head == "presence" and unused:
            raise ValueError(f"{', '.join(unused)} set for a KDE count head, but count_head is presence (no KDE "
                             "or MLP): drop them")
        return self


class LossConfig(Section):
    """Weights of the loss terms. ``iic_weight`` (with ``model.iic_clusters`` > 0: a softmax head of that many
    clusters on the features): IIC's mutual information between the assignments of ``iic_instances`` of a step's
    instances and of a random affine copy of each (:func:`pathoucc.training.losses.invariance_loss`), subtracted
    beside the count loss: features that cluster whatever the count head learns."""

    ucc_weight: float = Field(0.5, ge=0)
    ae_weight: float = Field(0.5, ge=0)
    iic_weight: float = Field(0.0, ge=0)
    iic_instances: int = Field(256, ge=2)


class TrainConfig(Section):
    """The loop. ``amp``: mixed precision where the hardware has it (bf16 on CPUs with AVX512-BF16/AMX and on GPUs
    that support it, else fp16 with loss scaling on GPUs; fp32 otherwise). ``encoder_chunk``: encode at most this
    many instances at once, recomputing activations in the backward pass (0 = all at once), for bags larger than
    memory."""

    steps: int = Field(2000, ge=1)
    max_minutes: float | None = Field(None, gt=0)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    schedule: Schedule = "cosine"
    warmup_steps: int = Field(0, ge=0)
    val_every: int = Field(500, ge=1)
    val_bags: int = Field(200, ge=1)
    checkpoint_every: int = Field(500, ge=1)
    log_every: int = Field(20, ge=1)
    device: Device = "auto"
    amp: bool = True
    encoder_chunk: int = Field(0, ge=0)
    num_threads: int = Field(0, ge=0)
    snapshot_every: int = Field(0, ge=0)


class EvalConfig(Section):
    """Scoring and feature extraction (evaluate, cluster, segment). ``amp``: extract features in mixed precision
    where the hardware has it (bf16 on CPUs with AVX512-BF16/AMX and on bf16 GPUs, fp16 on other GPUs)."""

    k: int | None = Field(None, ge=2)
    split: Split = "test"
    n_init: int = Field(10, ge=1)
    batch_size: int = Field(1024, ge=1)
    amp: bool = True


class RefineConfig(Section):
    """Count-consistent self-training after the UCC training (:mod:`pathoucc.cluster.refine`; ``steps`` 0 = off):
    each of ``rounds`` rounds clusters the training patches' features, corrects the clusters of every region to its
    count, and fine-tunes the encoder on them for ``steps`` steps of ``batch_size`` patches (Adam at ``lr``, cosine
    to 0). The regions: those of tiles or feature files; for MNIST/IDX, the training instances dealt once into
    fixed bags drawn like the training's (``pathoucc.data.fixed_bags``). ``count_iters`` > 0: the clusters are
    fitted by at most that many rounds of count-constrained k-means (``pathoucc.cluster.counted``), re-seeding any
    cluster left with under ``min_cluster_share`` of the patches, and from the second round also started from the
    last round's labels (the start of lower count-consistent cost kept), then at most ``swaps`` split-and-drop
    moves that lower that cost; 0: plain k-means. ``examples`` (off): a labelled-examples file (QuPath GeoJSON /
    ``slide,x,y,class`` CSV) whose patches keep their class as fixed pseudo-labels and name the clusters
    (:mod:`pathoucc.cluster.labelled`; measured worse than naming the refined run afterwards); ``example_classes``:
    its class names. ``pairwise_weight`` > 0 (off) adds ClusterNet's pairwise loss (``training.losses``, hinge
    ``pairwise_margin`` nats) on ``pairwise_batch`` labelled patches a step: those of ``examples`` (tiles) or of
    ``data.labelled_fraction`` / ``labels_per_class`` (MNIST/IDX); ``fix_examples`` false: ``examples`` enter
    that loss only, not the clustering."""

    steps: int = Field(0, ge=0)
    rounds: int = Field(1, ge=1)
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(256, ge=2)
    count_iters: int = Field(30, ge=0)
    min_cluster_share: float = Field(1e-3, ge=0, lt=1)
    swaps: int = Field(0, ge=0)
    examples: str | None = None
    example_classes: list[str] | None = Field(None, min_length=1)
    fix_examples: bool = True
    pairwise_weight: float = Field(0.0, ge=0)
    pairwise_margin: float = Field(2.0, gt=0)
    pairwise_batch: int = Field(128, ge=2)

    @model_validator(mode="after")
    def _examples_need_refining(self) -> RefineConfig:
        if self.examples is None and self.example_classes is not None:
            raise ValueError("refine.example_classes names the classes of refine.examples: give that file too")
        if self.examples is not None and not self.steps:
            raise ValueError("refine.examples labels patches of the refinement: set refine.steps > 0")
        if self.pairwise_weight > 0 and not self.steps:
            raise ValueError("refine.pairwise_weight trains the refinement: set refine.steps > 0")
        if not self.fix_examples and not (self.examples is not None and self.pairwise_weight > 0):
            raise ValueError("refine.fix_examples false keeps refine.examples for the pairwise loss only: give "
                             "refine.examples and refine.pairwise_weight > 0")
        if self.swaps and (not self.count_iters or (self.examples is not None and self.fix_examples)):
            raise ValueError("refine.swaps moves the count k-means: needs refine.count_iters > 0, no fixed examples")
        return self


class Config(Section):
    """A whole run. ``seed`` makes it reproducible on the same machine."""

    name: str = "run"
    seed: int = 0
    data: DataConfig = Field(default_factory=DataConfig)
    bags: BagsConfig = Field(default_factory=BagsConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    refine: RefineConfig = Field(default_factory=RefineConfig)

    @model_validator(mode="after")
    def _sources_and_models(self) -> Config:
        if self.refine.examples is not None and self.data.source != "tiles":
            raise ValueError("refine.examples labels patches of tile files: it needs data.source tiles")
        if self.refine.pairwise_weight > 0 and not (self.refine.examples or self.data.labelled_fraction
                                                    or self.data.labels_per_class):
            raise ValueError("refine.pairwise_weight needs labelled examples: refine.examples (tiles) or "
                             "data.labelled_fraction / data.labels_per_class (MNIST/IDX)")
        if (self.data.source == "features") != (self.model.backbone == "mlp"):
            raise ValueError("data.source features and model.backbone mlp go together (feature vectors in, no "
                             f"image encoder); got source {self.data.source!r}, backbone {self.model.backbone!r}")
        if self.data.source == "features" and self.data.augment:
            raise ValueError("data.augment transforms images; feature vectors take none (set data.augment: [])")
        if (self.loss.iic_weight > 0) != (self.model.iic_clusters > 0):
            raise ValueError("loss.iic_weight > 0 and model.iic_clusters > 0 go together (the invariance term "
                             f"trains that head); got {self.loss.iic_weight} and {self.model.iic_clusters}")
        if self.model.count_head == "presence" and self.model.presence_clusters < self.bags.ucc_max:
            raise ValueError(f"model.presence_clusters ({self.model.presence_clusters}) cannot count to "
                             f"bags.ucc_max ({self.bags.ucc_max})")
        if self.loss.iic_weight > 0 and self.model.backbone == "mlp":
            raise ValueError("loss.iic_weight needs images (a random affine copy of each); feature vectors have none")
        return self

    def to_dict(self) -> dict[str, Any]:
        """The config as plain JSON/YAML values (choices as strings)."""
        return self.model_dump(mode="json")


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Read, override and validate a YAML config. Every problem is a :class:`PathouccError` naming ``path`` (an
    alias bomb too: :func:`pathoucc.files.parse_yaml`); quoted values are cut to 200 characters."""
    raw: dict[str, Any] = {}
    if path is not None:
        raw = read_yaml(path, "config") or {}
        if not isinstance(raw, dict):
            raise PathouccError("config must be a mapping of sections", path)
    apply_overrides(raw, overrides or [])
    return config_from_dict(raw, "config" if path is None else str(path))


def config_from_dict(raw: dict[str, Any], source: str = "config") -> Config:
    """Validate a raw config dict; a problem is a :class:`PathouccError` naming ``source`` and the key."""
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise PathouccError(format_error(exc, Config, source)) from None


def save_config(config: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically)."""
    write_text(path, yaml.safe_dump(config.to_dict(), sort_keys=False))
