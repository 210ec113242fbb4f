"""Typed, validated configuration: one section per pipeline stage.

Defaults reproduce the paper (docs/paper-notes.md); where the paper is
ambiguous the reading we take is the default and the alternatives are switches,
documented on the field. A config is loaded from YAML, overridden from the
command line with ``--set section.field=value`` (the value is parsed as YAML),
validated as a whole, and saved next to every output it produces.

    cfg = load_config("my.yaml", ["filter.fill_rate=0.5", "select.alpha=1"])
    cfg.filter.fill_rate  # 0.5

A wrong value raises :class:`ConfigError` naming the field, the value, what is
allowed and the default.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import warnings
from pathlib import Path
from typing import Any, ClassVar, Literal, Optional, Sequence, get_args, get_origin

import yaml
from annotated_types import Ge, Gt, Le, Lt
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .subtypes import DEFAULT_MIX, SUBTYPES

CONFIG_FILENAME = "config.yaml"

HSVBound = tuple[int, int, int]
HSVRange = tuple[HSVBound, HSVBound]  # ((h_lo, s_lo, v_lo), (h_hi, s_hi, v_hi)), OpenCV units


class ConfigError(ValueError):
    """A configuration value is wrong; the message says which and how to fix it."""


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, assignment is validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    def digest(self) -> str:
        """Short stable hash of this section's values (recorded with outputs)."""
        return config_digest(self)


# ---------------------------------------------------------------- run / synth


class RunConfig(Section):
    work_dir: str = Field("work", description="where outputs, the local MLflow store and Ray storage go")
    seed: int = Field(0, ge=0, description="global seed; stages derive theirs from it unless set")
    experiment: str = Field("activessf", min_length=1, description="MLflow experiment name")
    ray_num_cpus: Optional[int] = Field(
        None, ge=1, description="CPUs for a local Ray started by the platform (None = all)"
    )
    inline_data_mb: float = Field(
        256, ge=0, description="data up to this size skips a Ray Data pipeline (saves seconds per run): training "
        "sets (decoded) go to the Ray Train workers in memory, embedding sets are embedded in the driver, a "
        "filter's output is split into its tables in the driver; larger ones stream from Ray Data; 0 = always stream"
    )
    quiet: bool = Field(False, description="no progress bars, no per-epoch lines (also in Ray Train workers), "
                        "no info logs: warnings, errors and the result only (the CLI's --quiet)")


class PlacementConfig(Section):
    """Which node type runs what, on a cluster whose nodes carry a type label (``ray start --labels
    node-type=cpu``). A stage's work goes to nodes of its type when the cluster has any; on a cluster
    without them (one machine, untyped nodes) it runs anywhere, as before. "" = anywhere, always."""

    label: str = Field("node-type", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-/]*$",
                       description="the node label whose value is the node's type")
    data: str = Field("cpu", description="node type for region filtering, and for embedding and prediction "
                      "when they run on CPU")
    store: str = Field("cpu", description="node type for the prototype store actor")
    train: str = Field("gpu", description="node type for Ray Train workers (pretraining, fine-tuning, "
                       "selection trials) and for embedding and prediction actors on GPU")


class SynthConfig(Section):
    seed: int = Field(0, ge=0, description="generator seed; same seed and settings = identical files")
    images: int = Field(24, ge=1, le=1_000_000, description="number of smear fields")
    width: int = Field(1024, ge=256, le=8192, description="field width in pixels")
    height: int = Field(768, ge=256, le=8192, description="field height in pixels")
    labelled: int = Field(240, ge=0, le=1_000_000, description="labelled crops (the paper's set T)")
    labelled_margin: int = Field(
        8, ge=0, le=256, description="pixels around each labelled cell's box (as filter.crop_margin)"
    )
    labelled_min_per_class: int = Field(
        5, ge=0, description="floor per subtype in the labelled set (5 allows 5-fold CV)"
    )
    megakaryocytes: tuple[int, int] = Field((1, 4), description="min, max megakaryocytes per field")
    leukocytes: tuple[int, int] = Field((3, 9), description="min, max small leukocytes per field")
    platelets: tuple[int, int] = Field((8, 30), description="min, max platelets per field")
    debris: tuple[int, int] = Field((4, 14), description="min, max debris particles per field")
    clumps: float = Field(0.35, ge=0, le=10, description="mean large stain-precipitate clumps per field")
    rbc_coverage: float = Field(0.30, ge=0, le=0.8, description="share of the field covered by red cells")
    noise_sigma: float = Field(3.0, ge=0, le=50, description="sensor noise, grey levels")
    illumination: float = Field(0.22, ge=0, le=0.9, description="strength of uneven illumination")
    stain_jitter: float = Field(0.2, ge=0, le=0.6, description="relative stain intensity variation")
    mix: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_MIX), description="subtype shares (normalised)"
    )
    workers: Optional[int] = Field(None, ge=1, le=256, description="processes (None = CPU count)")

    @field_validator("mix")
    @classmethod
    def _check_mix(cls, mix: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(mix) - set(SUBTYPES))
        if unknown:
            raise ValueError(f"unknown subtypes {unknown}; known: {list(SUBTYPES)}")
        if any(v < 0 for v in mix.values()) or sum(mix.values()) <= 0:
            raise ValueError("shares must be >= 0 and not all zero")
        return {name: float(mix.get(name, 0.0)) for name in SUBTYPES}  # shares; used normalised

    @model_validator(mode="after")
    def _check_labelled(self) -> "SynthConfig":
        need = self.labelled_min_per_class * len(SUBTYPES)
        if 0 < self.labelled < need:
            raise ValueError(
                f"labelled ({self.labelled}) must be 0 or >= {len(SUBTYPES)} subtypes x "
                f"labelled_min_per_class ({self.labelled_min_per_class}) = {need}"
            )
        return self

    @field_validator("megakaryocytes", "leukocytes", "platelets", "debris")
    @classmethod
    def _check_span(cls, span: tuple[int, int]) -> tuple[int, int]:
        if not 0 <= span[0] <= span[1]:
            raise ValueError(f"must be [min, max] with 0 <= min <= max, got {list(span)}")
        return span


# -------------------------------------------------------------- stage 1: filter


def _check_hsv_ranges(ranges: list[HSVRange]) -> list[HSVRange]:
    for lo, hi in ranges:
        for name, a, b, top in zip("HSV", lo, hi, (179, 255, 255)):
            if not 0 <= a <= b <= top:
                raise ValueError(
                    f"{name} range [{a}, {b}] must satisfy 0 <= low <= high <= {top} (OpenCV units)"
                )
    return ranges


class FilterConfig(Section):
    """Cell region filtering, paper Sec. II-B (NOTES items 1-3)."""

    normalize: Literal["minmax", "percentile", "none"] = Field(
        "minmax", description="illumination normalisation before blurring"
    )
    blur_kernel: int = Field(3, ge=1, le=31, description="Gaussian kernel size (odd)")
    blur_sigma: float = Field(1.5, gt=0, le=20, description="Gaussian sigma")
    kmeans_clusters: int = Field(20, ge=2, le=256, description="first-stage colour clusters")
    merged_clusters: int = Field(10, ge=1, le=256, description="clusters after merging")
    colour_bits: int = Field(
        5, ge=4, le=8, description="colour histogram resolution, bits per channel (K-means runs one bit coarser)"
    )
    kmeans_bits: int = Field(
        3, ge=2, le=8, description="K-means runs on histogram cells this coarse (bits per channel, <= colour_bits)"
    )
    kmeans_max_iter: int = Field(100, ge=1, le=10_000, description="Lloyd iterations at most")
    purple: list[HSVRange] = Field(
        default_factory=lambda: [((30, 100, 0), (140, 255, 255))], description="purple HSV ranges"
    )
    deep_blue: list[HSVRange] = Field(
        default_factory=lambda: [((95, 150, 50), (105, 255, 255))],
        description="deep-blue HSV ranges (inside the purple range: NOTES item 1)",
    )
    mask: Literal["hsv", "absorbance"] = Field(
        "hsv", description="which colours are cells: hsv = the paper's purple/deep-blue HSV ranges; absorbance = "
        "colours absorbing red light (optical density against the image's own background) of at least od_red and "
        "od_ratio times their blue absorbance: stain- and exposure-robust (docs/filter.md)"
    )
    od_red: float = Field(0.18, gt=0, le=3, description="absorbance mask: minimum red optical density (log10)")
    od_ratio: float = Field(0.7, ge=0, le=10, description="absorbance mask: red OD >= od_ratio * blue OD "
                            "(stained nuclei absorb red; red cells absorb blue)")
    closing_kernel: int = Field(0, ge=0, le=63, description="morphological closing size, 0 = off")
    min_box: int = Field(70, ge=1, le=10_000, description="minimum box side, pixels")
    um_per_px: Optional[float] = Field(
        None, gt=0, le=100, description="micrometres per pixel of your images; needed by the *_um sizes"
    )
    min_box_um: Optional[float] = Field(None, gt=0, le=1000, description="minimum box side in micrometres "
                                        "(replaces min_box; needs um_per_px)")
    closing_um: Optional[float] = Field(None, ge=0, le=100, description="closing size in micrometres (replaces "
                                        "closing_kernel; needs um_per_px)")
    grow: int = Field(0, ge=0, le=1000, description="pixels added to every side of a kept box: the stained "
                      "nucleus-dense region grown towards the whole cell (its cytoplasm rim)")
    grow_um: Optional[float] = Field(None, ge=0, le=100, description="grow in micrometres (replaces grow; "
                                     "needs um_per_px)")
    fill_rate: float = Field(0.7, ge=0, le=1, description="minimum region pixels / box area")
    crop_margin: int = Field(8, ge=0, le=512, description="pixels added around each kept box")
    max_pixels: int = Field(100_000_000, ge=1, description="larger images are refused (bomb guard)")
    seed: int = Field(0, ge=0, description="K-means seed")
    # pictures only: left out of the digest, which stays that of outputs made before the field existed
    NOT_DIGESTED: ClassVar[frozenset] = frozenset({"overlays"})
    overlays: int = Field(6, ge=0, le=200, description="fields drawn with their kept (green) and rejected-for-fill-"
                          "rate (red) boxes into OUT/overlays/ (evenly spaced over the processed fields; 0 = none); "
                          "not part of the digest: pictures only")

    @field_validator("purple", "deep_blue")
    @classmethod
    def _check_ranges(cls, ranges: list[HSVRange]) -> list[HSVRange]:
        return _check_hsv_ranges(ranges)

    @model_validator(mode="after")
    def _check(self) -> "FilterConfig":
        if self.blur_kernel % 2 == 0:
            raise ValueError(f"blur_kernel must be odd, got {self.blur_kernel}; the paper uses 3")
        if self.kmeans_bits > self.colour_bits:
            raise ValueError(f"kmeans_bits ({self.kmeans_bits}) must be <= colour_bits ({self.colour_bits})")
        if self.merged_clusters > self.kmeans_clusters:
            raise ValueError(
                f"merged_clusters ({self.merged_clusters}) must be <= kmeans_clusters "
                f"({self.kmeans_clusters}); the paper merges 20 -> 10"
            )
        sizes = {k: getattr(self, k) for k in ("min_box_um", "closing_um", "grow_um") if getattr(self, k) is not None}
        if sizes and self.um_per_px is None:
            raise ValueError(f"{', '.join(sizes)} in micrometres need filter.um_per_px, the micrometres per pixel "
                             "of your images (e.g. --set filter.um_per_px=0.1)")
        closing = self.in_pixels().closing_kernel
        if closing > 63:
            raise ValueError(f"closing_um {self.closing_um} at {self.um_per_px} um/px is a {closing}-pixel closing, "
                             "above the 63 allowed: lower closing_um or check um_per_px")
        return self

    def in_pixels(self) -> "FilterConfig":
        """This config with the micrometre sizes turned into ``min_box``, ``closing_kernel`` and ``grow`` pixels."""
        update = {}
        if self.min_box_um is not None:
            update["min_box"] = max(1, int(round(self.min_box_um / self.um_per_px)))
        if self.closing_um is not None:
            update["closing_kernel"] = int(round(self.closing_um / self.um_per_px))
        if self.grow_um is not None:
            update["grow"] = int(round(self.grow_um / self.um_per_px))
        return self.model_copy(update=update) if update else self


# -------------------------------------------------- stages 2-3: embed, select


class EmbedConfig(Section):
    backbone: str = Field("resnet50", min_length=1, description="any timm model name")
    weights: Optional[str] = Field(None, description="a weights file, an `activessf pretrain` output (its encoder "
                                   "replaces backbone) or an MLflow URI; None = random init, or in `pipeline` and "
                                   "`bootstrap` features learned without labels (select.bootstrap)")
    image_size: int = Field(224, ge=16, le=1024, description="crops are resized to this square")
    mean: Optional[tuple[float, float, float]] = Field(
        None, description="normalisation mean; None = the model's own: an `activessf pretrain` encoder's pretraining "
        "values, else timm's data config of the model (resolve_data_config: ImageNet's for most, 0.5 for many ViTs)")
    std: Optional[tuple[float, float, float]] = Field(None, description="normalisation std; None = the model's own "
                                                      "(as mean)")
    batch_size: int = Field(64, ge=1, le=8192, description="images per batch")
    seed: int = Field(0, ge=0, description="seed of the initialisation (the same random network everywhere)")


class PrototypesConfig(Section):
    k: int = Field(11, ge=1, le=10_000, description="number of prototypes (paper: 11)")
    mode: Literal["kmeans", "class_aware"] = Field(
        "kmeans", description="kmeans = paper (labels unused); class_aware = extension, k per class"
    )
    per_class: int = Field(1, ge=1, le=100, description="prototypes per class in class_aware mode")
    niter: int = Field(50, ge=1, le=10_000, description="K-means iterations")
    seed: int = Field(0, ge=0, description="K-means seed")


class SelectConfig(Section):
    """Density-aware threshold, Eq. 8 (NOTES items 4-8)."""

    alpha: float = Field(0.5, ge=0, le=100, description="Eq. 8 exponent (Algorithm 1: 0.5)")
    bound_mode: Literal["minmax", "absolute", "quantile"] = Field(
        "minmax", description="where LB and UB come from (NOTES item 5)"
    )
    lb: float = Field(15.0, ge=0, description="global LB in absolute mode (Sec. III-B: 17 - 2)")
    ub: float = Field(19.0, ge=0, description="global UB in absolute mode (Sec. III-B: 17 + 2)")
    q_low: float = Field(0.05, ge=0, le=1, description="LB quantile in quantile mode")
    q_high: float = Field(0.95, ge=0, le=1, description="UB quantile in quantile mode")
    rounds: int = Field(1, ge=1, le=20, description="selection rounds (1 = the paper); each further round "
                        "pretrains pretrain.method briefly on the last round's selection, re-embeds and reselects")
    bootstrap: bool = Field(True, description="`pipeline`/`bootstrap` with no embed.weights: round 0 learns label-free "
                            "features first (pretrain.method on every filtered region); false = a randomly "
                            "initialised embed.backbone")
    bootstrap_epochs: int = Field(20, ge=1, description="pretraining epochs of each bootstrap round")
    bootstrap_steps: Optional[int] = Field(None, ge=1, description="instead: at least this many optimiser steps "
                                           "per bootstrap round (equal budgets whatever the pool size)")

    @model_validator(mode="after")
    def _check(self) -> "SelectConfig":
        if self.lb > self.ub:
            raise ValueError(f"lb ({self.lb}) must be <= ub ({self.ub})")
        if self.q_low > self.q_high:
            raise ValueError(f"q_low ({self.q_low}) must be <= q_high ({self.q_high})")
        return self


# -------------------------------------------------- stages 4-5: train, evaluate


class PretrainConfig(Section):
    method: str = Field("mae", min_length=1, description="SSL method from the registry (`activessf methods`)")
    model: Literal["micro", "mini", "tiny", "small", "base", "large"] = Field(
        "base", description="ViT size (micro: tests and CPU demos; mini: CPU experiments)"
    )
    image_size: int = Field(224, ge=16, le=1024, description="input size")
    patch_size: int = Field(16, ge=2, le=64, description="ViT patch size")
    options: dict = Field(
        default_factory=dict, description="the method's own settings, e.g. {mask_ratio: 0.6}; each method declares "
        "them with their defaults (`activessf methods` lists them)"
    )
    source: Literal["selected", "filtered", "fields"] = Field(
        "selected", description="selected regions (ActiveSSF), all filtered regions, or random crops of raw fields"
    )
    epochs: int = Field(400, ge=1, description="paper: 400")
    steps: Optional[int] = Field(None, ge=1, description="train for at least this many optimiser steps instead of "
                                 "`epochs` (whole epochs, rounded up): equal budgets for pools of different sizes")
    images: Optional[int] = Field(None, ge=1, description="or: train until at least this many images were seen "
                                  "(steps = images / batch_size, rounded up); exclusive with `steps`")
    warmup_epochs: int = Field(5, ge=0, description="paper: 5")
    batch_size: int = Field(64, ge=1, description="global batch (paper: 64)")
    base_lr: float = Field(1e-3, gt=0, le=10, description="lr = base_lr * batch / 256")
    weight_decay: float = Field(0.05, ge=0, le=10, description="AdamW, not on norms and biases")
    layer_decay: float = Field(0.75, gt=0, le=1, description="layer-wise lr decay of the encoder's blocks (the "
                               "paper: 0.75 'during both the pre-training and fine-tuning stages'); 1.0 = off, "
                               "MAE's and MoCo v3's own pretraining recipes. Decoders and heads learn at the full rate")
    accum_steps: int = Field(1, ge=1, le=1024, description="gradient accumulation steps")
    num_workers: Optional[int] = Field(None, ge=1, description="Ray Train workers (None = from cluster)")
    use_gpu: Optional[bool] = Field(None, description="None = use GPUs when the cluster has them")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto = bf16/fp16 AMP on GPU, fp32 on CPU"
    )
    checkpoint_every: int = Field(10, ge=1, description="epochs between checkpoints")
    keep_checkpoints: int = Field(3, ge=1, description="checkpoints kept")

    @model_validator(mode="after")
    def _check(self) -> "PretrainConfig":
        if self.warmup_epochs > self.epochs:
            raise ValueError(f"warmup_epochs ({self.warmup_epochs}) must be <= epochs ({self.epochs})")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size ({self.image_size}) must be a multiple of patch_size ({self.patch_size})")
        if self.steps and self.images:
            raise ValueError(f"pretrain.steps ({self.steps}) and pretrain.images ({self.images}) both set a budget: "
                             "keep one (set the other to null)")
        return self

    def step_target(self) -> Optional[int]:
        """The optimiser steps ``steps`` or ``images`` asks for (None: train ``epochs``)."""
        return self.steps or (-(-self.images // self.batch_size) if self.images else None)


class FinetuneConfig(Section):
    init: Optional[str] = Field(
        None, description="pretrained encoder (a `pretrain` output dir, a weights file or an MLflow URI); None = scratch"
    )
    backbone: str = Field("vit_base_patch16_224", min_length=1, description="timm model name (ignored with an encoder dir)")
    backbone_kwargs: dict = Field(default_factory=dict, description="extra timm kwargs, e.g. img_size, depth")
    drop_path: float = Field(0.1, ge=0, lt=1, description="stochastic depth (MAE fine-tuning recipe)")
    num_classes: Optional[int] = Field(None, ge=2, description="classes the labelled set must have (the paper: 11 "
                                       "subtypes); None = as many as it has")
    image_size: int = Field(224, ge=16, le=1024, description="paper: 224 (from a pretrained encoder: its size)")
    epochs: int = Field(50, ge=1, description="paper: 50")
    warmup_epochs: int = Field(5, ge=0, description="warm-up epochs")
    batch_size: int = Field(64, ge=1, description="global batch")
    base_lr: float = Field(1e-3, gt=0, le=10, description="lr = base_lr * batch / 256")
    layer_decay: float = Field(0.75, gt=0, le=1, description="layer-wise lr decay (paper: 0.75)")
    weight_decay: float = Field(0.05, ge=0, le=10, description="AdamW weight decay")
    class_balanced: bool = Field(False, description="extension: class-balanced sampling")
    class_weights: bool = Field(False, description="extension: inverse-frequency loss weights")
    num_workers: int = Field(1, ge=1, description="Ray Train workers per fold")
    use_gpu: Optional[bool] = Field(None, description="None = use GPUs when the cluster has them")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field("auto", description="as pretrain.precision")
    parallel_folds: Optional[int] = Field(None, ge=1, description="folds trained at once (None = fit the cluster)")
    final_fit: bool = Field(
        False, description="after cross-validation, train once on every sample and save it as OUT/model (to register)"
    )

    @model_validator(mode="after")
    def _check(self) -> "FinetuneConfig":
        if self.warmup_epochs > self.epochs:
            raise ValueError(f"warmup_epochs ({self.warmup_epochs}) must be <= epochs ({self.epochs})")
        return self


class EvaluateConfig(Section):
    folds: int = Field(5, ge=2, le=100, description="stratified k-fold (paper: 5)")
    seed: int = Field(0, ge=0, description="fold seed; identical folds across compared runs")
    repeats: int = Field(1, ge=1, le=100, description="repeated stratified k-fold: repeat r uses seed + r "
                         "(paper: 1; a folds.json given with --folds decides instead)")
    rare_share: float = Field(0.03, ge=0, le=1, description="classes below this share are rare")
    common_share: float = Field(0.15, ge=0, le=1, description="classes above this share are common")
    significance: float = Field(0.05, gt=0, lt=1, description="level of the comparisons' t-tests (* marks)")
    equal_steps: bool = Field(True, description="ablation rows pretrain for the same optimiser steps: pretrain.steps, "
                              "or what the selected regions take in pretrain.epochs; false: pretrain.epochs on every "
                              "pool (the paper's reading, which gives larger pools more steps)")
    cnn_baseline: str = Field("resnet50", min_length=1,
                              description="timm CNN of Table II's supervised ResNet row (ablation --baselines resnet)")
    allow_leak: bool = Field(False, description="fine-tuning and the ablation refuse to score labelled cells that "
                             "the features or the sweep behind the evaluated selection learned from (use `activessf "
                             "split`); true scores them anyway, optimistically, and the outputs record the leak")


class SweepConfig(Section):
    """``activessf sweep`` (Ray Tune): trials, early stopping and the objective."""

    num_samples: int = Field(8, ge=1, description="trials (times every grid combination)")
    max_concurrent_trials: Optional[int] = Field(None, ge=1, description="None = as many as the cluster holds")
    grace_period: int = Field(1, ge=1, description="ASHA: epochs a selection trial runs before it can be stopped")
    reduction_factor: int = Field(2, ge=2, description="ASHA: keep the best 1/r of trials at each rung")
    pretrain_epochs: int = Field(2, ge=1, description="epochs of pretraining per selection trial")
    num_workers: int = Field(1, ge=1, description="Ray Train workers per selection trial")
    probe: Literal["linear", "knn"] = Field("linear", description="objective of a selection trial: probe kind")
    probe_fold: int = Field(0, ge=0, description="which evaluate.folds fold of the sweep's --labelled cells the "
                            "probe holds out (sweep on a split's tune.csv, never on the cells evaluated later)")
    tuned_on: list[str] = Field(default_factory=list, description="set by `activessf sweep` in best.yaml, not by "
                                "hand: the label_ids.json of the labelled cells its probe scored the trials on; "
                                "evaluations of a selection made with these settings refuse those cells")
    iou: float = Field(0.3, gt=0, le=1, description="filter sweeps: IoU at which a region matches a box")
    filter_images: Optional[int] = Field(None, ge=1, description="filter sweeps: score on this many images (None = all)")
    seed: int = Field(0, ge=0, description="search seed")


class RegisterConfig(Section):
    """``activessf register`` and the served model."""

    model_name: str = Field("activessf-classifier", min_length=1, description="registered model name")
    alias: str = Field("champion", min_length=1, description="alias moved on promotion")
    p_value: float = Field(0.05, gt=0, lt=1, description="promotion needs a gain with paired t-test p below this")
    max_image_pixels: int = Field(25_000_000, ge=1, description="served images above this are refused (from the header)")
    max_image_bytes: int = Field(20_000_000, ge=1, description="served files above this are refused")
    max_images: int = Field(64, ge=1, description="images per request at most")
    max_request_bytes: int = Field(64_000_000, ge=1, description="served request bodies above this get 413, "
                                   "before they are parsed")


# pydantic warns that the field `register` shadows ABCMeta.register on the class;
# instances read the field, which is what we want, so the warning is silenced.
warnings.filterwarnings("ignore", message='Field name "register"', category=UserWarning)


class Config(Section):
    """The whole pipeline's configuration; each attribute is one stage's section."""

    run: RunConfig = Field(default_factory=RunConfig)
    placement: PlacementConfig = Field(default_factory=PlacementConfig)
    synth: SynthConfig = Field(default_factory=SynthConfig)
    filter: FilterConfig = Field(default_factory=FilterConfig)
    embed: EmbedConfig = Field(default_factory=EmbedConfig)
    prototypes: PrototypesConfig = Field(default_factory=PrototypesConfig)
    select: SelectConfig = Field(default_factory=SelectConfig)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    sweep: SweepConfig = Field(default_factory=SweepConfig)
    register: RegisterConfig = Field(default_factory=RegisterConfig)


# ------------------------------------------------------------ load / override


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"filter.fill_rate=0.5"`` -> (["filter", "fill_rate"], 0.5); the value is YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} must look like section.field=value, e.g. filter.fill_rate=0.5")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({exc})") from None
    return key.strip().split("."), value


def apply_overrides(raw: dict, overrides: Sequence[str]) -> dict:
    """Set dotted keys in a nested dict (a copy); validation happens afterwards."""
    out = json.loads(json.dumps(raw))
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {part!r} is a value, not a section")
            node = child
        node[path[-1]] = value
    return out


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, got {type(data).__name__}")
    return data


PRESETS_DIR = Path(__file__).parent / "presets"


def presets() -> list[str]:
    """Names of the shipped presets (``activessf/presets/*.yaml``)."""
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def read_preset(name: str) -> dict:
    path = PRESETS_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown preset {name!r}; shipped presets: {', '.join(presets())}")
    return read_yaml(path)


def merge(base: dict, top: dict) -> dict:
    """Deep merge of nested dicts; ``top`` wins."""
    out = dict(base)
    for key, value in top.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_config(
    path: str | Path | None = None, overrides: Sequence[str] = (), preset: str | None = None
) -> Config:
    """Defaults, then the shipped presets (comma-separated, in order), then the YAML file, then ``--set``
    overrides; validated."""
    # Start from the defaults so that overriding one key of a mapping (synth.mix.CA-MK=0.05)
    # keeps the others; unknown keys from files still surface as errors.
    raw = Config().model_dump(mode="json")
    for name in filter(None, (preset or "").split(",")):  # "wbc,cpu": applied in that order
        raw = merge(raw, read_preset(name.strip()))
    if path:
        raw = merge(raw, read_yaml(path))
    return build_config(apply_overrides(raw, overrides))


def build_config(raw: dict, model: type[BaseModel] = Config) -> Any:
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(explain(exc, model)) from None


def save_config(cfg: BaseModel, directory: str | Path, name: str = CONFIG_FILENAME) -> Path:
    """Write the config as YAML next to a stage's outputs; returns the file path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(to_yaml(cfg))
    return path


def to_yaml(cfg: BaseModel) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, default_flow_style=None)


def config_digest(cfg: BaseModel) -> str:
    """First 16 hex digits of the SHA-256 of the canonical JSON of a config (less its ``NOT_DIGESTED`` fields,
    which change no result)."""
    text = json.dumps(cfg.model_dump(mode="json", exclude=set(getattr(cfg, "NOT_DIGESTED", ())) or None),
                      sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def flatten(cfg: BaseModel) -> dict[str, Any]:
    """``{"filter.fill_rate": 0.7, ...}``: the form MLflow params take."""
    out: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(f"{prefix}.{key}" if prefix else str(key), value)
        else:
            out[prefix] = node

    walk("", cfg.model_dump(mode="json"))
    return out


# ------------------------------------------------------------ error messages


def explain(exc: ValidationError, model: type[BaseModel]) -> str:
    lines = ["invalid configuration:"]
    for err in exc.errors():
        lines.append("  - " + _explain_one(err, model))
    lines.append("Fix the value in your YAML file or with --set section.field=value.")
    return "\n".join(lines)


def _explain_one(err: dict, model: type[BaseModel]) -> str:
    loc = [str(p) for p in err["loc"]]
    dotted = ".".join(loc) or "<config>"
    if err["type"] == "extra_forbidden":
        owner = _model_at(model, loc[:-1])
        known = list(owner.model_fields) if owner else []
        close = difflib.get_close_matches(loc[-1], known, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        if loc[0] == "pretrain" and len(loc) == 2:
            hint += " A method's own settings go under pretrain.options (e.g. pretrain.options.mask_ratio=0.6)."
        return f"{dotted}: unknown field.{hint} Known fields here: {', '.join(known)}"
    msg = err["msg"].removeprefix("Value error, ")
    field = _field_at(model, loc)
    if field is None or _model_at(model, loc) is not None:  # unknown place, or a whole section
        return f"{dotted}: {msg}"
    value = err.get("input")
    parts = [f"{dotted} = {value!r}: {msg}."]
    allowed = _allowed(field)
    if allowed:
        parts.append(f"Allowed: {allowed}.")
    if field.default is not None and not callable(field.default) and repr(field.default) != "PydanticUndefined":
        parts.append(f"Default: {field.default!r}.")
    if field.description:
        parts.append(f"({field.description})")
    return " ".join(parts)


def _model_at(model: type[BaseModel], loc: list[str]) -> Optional[type[BaseModel]]:
    for part in loc:
        field = model.model_fields.get(part)
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return None
        model = field.annotation
    return model


def _field_at(model: type[BaseModel], loc: list[str]):
    owner = _model_at(model, loc[:-1]) if loc else None
    if owner is None:
        # the error may sit deeper than a field (an item of a list): find the field prefix
        for cut in range(len(loc) - 1, 0, -1):
            owner = _model_at(model, loc[: cut - 1])
            if owner is not None and loc[cut - 1] in owner.model_fields:
                return owner.model_fields[loc[cut - 1]]
        return None
    return owner.model_fields.get(loc[-1])


_BOUNDS = ((Ge, ">=", "ge"), (Gt, ">", "gt"), (Le, "<=", "le"), (Lt, "<", "lt"))


def _allowed(field) -> str:
    if get_origin(field.annotation) is Literal:
        return "one of " + ", ".join(map(repr, get_args(field.annotation)))
    bounds = [
        f"{sym} {getattr(meta, attr)}"
        for meta in field.metadata
        for kind, sym, attr in _BOUNDS
        if isinstance(meta, kind)
    ]
    return " and ".join(bounds)
