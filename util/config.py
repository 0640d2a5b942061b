"""Typed configuration: every hyperparameter lives in YAML, is validated on load, and is saved with each run.

A config file holds the sections below; anything left out takes the default written here (the method's
values, docs/method.md), so the shipped files state only what differs per dataset and what users edit most.
Unknown keys, wrong types (a YAML boolean where a number belongs too) and out-of-range values are errors that
name the key and the file. Command-line overrides `section.key=value` are applied on top, in order (a later
one wins), and validated the same way.
A loaded config is frozen, and its paths are absolute (`~` expanded, relative ones taken from the current
folder), so a run's saved config.yaml means the same files from any folder.

The config also owns the vocabulary it validates: the dataset catalogue (util/catalog.py), the method names
(registered by methods/__init__.py, each method declared in its own file), and which keys change the model,
which may change freely on resume.
"""

from __future__ import annotations

import copy
import difflib
import os
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from util.catalog import DATASETS
from util.errors import ConfigError
from util.io import write_text

# The ViT patch size of the DINOv2 encoders: a fact of the model, kept here so that the config can check crop
# and window sizes without importing torch; model/encoder.py and eval/inference.py import it from here.
PATCH_SIZE = 14
Backbone = Literal["tiny", "small", "base", "large", "giant"]
Precision = Literal["auto", "bf16", "fp16", "fp32"]
TeacherName = Literal["dino", "clip"]
# A frozen teacher's compute precision on a GPU (on a CPU teachers always run in fp32).
TeacherPrecision = Literal["fp16", "bf16", "fp32"]


def _not_empty(value: str) -> str:
    # An empty path is how an unset shell variable arrives (`model.pretrained=$WEIGHTS`); null means "none".
    if not value.strip():
        raise ValueError("is empty; give a path, or null for none")
    return value


# A file or folder path given by the user: never the empty string.
PathText = Annotated[str, AfterValidator(_not_empty)]


# ----------------------------------------------------------------------------------------------------------
# The training methods. Each declares itself in its own file under methods/ (its step, whether it distils towards
# the teachers, its batch rule), and methods/__init__.py registers it here, in the order tables list them. The
# config sits below methods/ and never imports it; every program that loads a config imports methods first, and
# validating a method name before that is a loud internal error, not a silent pass.

_DISTILS: dict[str, bool] = {}


def register_method(name: str, distils: bool) -> None:
    """Make `name` a valid train.method; `distils`: its model carries translators for the enabled teachers."""
    if name in _DISTILS:
        raise RuntimeError(f"method '{name}' is registered twice")
    _DISTILS[name] = distils


def method_names() -> tuple[str, ...]:
    """The registered methods, in the order tables list them."""
    if not _DISTILS:
        raise RuntimeError("no training method is registered: import methods before loading a config")
    return tuple(_DISTILS)


def method_distils(name: str | None) -> bool:
    """Whether method `name` distils towards the frozen teachers (False for names that are no method)."""
    return name in method_names() and _DISTILS[name or ""]


class Section(BaseModel):
    # Frozen: a loaded config never changes; Config.replace derives a changed copy, validated as a file is.
    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_boolean_for_a_number(cls, value: Any, info: ValidationInfo) -> Any:
        # YAML reads true/false/yes/no/on/off as booleans, and pydantic's lax mode takes a boolean as 1 or 0:
        # `train.lr: true` or `train.epochs=yes` would train with 1. Every numeric field, here in one place.
        annotation = cls.model_fields[info.field_name or ""].annotation
        if _holds_boolean(value) and _wants_number(annotation) and not _admits_boolean(annotation):
            raise ValueError("a YAML boolean (true/false/yes/no/on/off) where a number is expected; write the number")
        return value


def _holds_boolean(value: Any) -> bool:
    if isinstance(value, dict):
        return any(_holds_boolean(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_holds_boolean(v) for v in value)
    return isinstance(value, bool)


def _type_arguments(annotation: Any) -> tuple[Any, ...]:
    # Literal's arguments are values, not types; Annotated's first one is the type.
    if get_origin(annotation) is Literal:
        return ()
    args = get_args(annotation)
    return args[:1] if get_origin(annotation) is Annotated else args


def _wants_number(annotation: Any) -> bool:
    """Whether an annotation holds an int or a float, alone or inside an Optional, a tuple or a mapping's values."""
    if annotation in (int, float):
        return True
    return any(_wants_number(a) for a in _type_arguments(annotation))


def _admits_boolean(annotation: Any) -> bool:
    return annotation is bool or any(_admits_boolean(a) for a in _type_arguments(annotation))


def _check_range(pair: tuple[float, float], low: float, high: float) -> tuple[float, float]:
    if not (low <= pair[0] <= pair[1] <= high):
        raise ValueError(f"must be an ordered pair [min, max] within [{low}, {high}]")
    return pair


# Where a dataset's prepared tiles are by default (dataset.root, and dataset.prepare's --out), where they were
# before they moved out of the package (named by the error when tiles are not found), and its split lists.
TILES_DEFAULT = "data/{name}"
TILES_BEFORE = "dataset/{name}"
LISTS_DEFAULT = "splits/{name}"


class DatasetConfig(Section):
    name: str = "loveda"
    # The prepared tiles (--out of dataset.prepare) and the folder of split lists; left out: data/<name>,
    # splits/<name> (the shipped lists).
    root: PathText = TILES_DEFAULT.format(name="loveda")
    lists: PathText = LISTS_DEFAULT.format(name="loveda")
    # Labelled share in percent: the folder <lists>/<split>/ holding labeled.txt and unlabeled.txt.
    split: str = "10"
    crop_size: int = Field(518, gt=0)
    # Classes dropped from the score; null takes the dataset's protocol (docs/method.md §5, DWL). A tuple, as frozen as
    # the section (saved as a list).
    eval_exclude: tuple[int, ...] | None = None

    @field_validator("crop_size")
    @classmethod
    def _multiple_of_patch(cls, v: int) -> int:
        if v % PATCH_SIZE:
            raise ValueError(f"must be a multiple of the patch size {PATCH_SIZE} (e.g. {round(v / 14) * 14 or 14})")
        return v

    @field_validator("split", mode="before")
    @classmethod
    def _split_as_text(cls, v: Any) -> Any:
        # `--split 5` and `dataset.split=0.125` arrive as numbers; the split is a folder name, written as typed.
        return str(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v

    @model_validator(mode="before")
    @classmethod
    def _folders_follow_the_name(cls, values: Any) -> Any:
        if isinstance(values, dict) and isinstance(values.get("name"), str):
            name = values["name"]
            values = {"root": TILES_DEFAULT.format(name=name), "lists": LISTS_DEFAULT.format(name=name), **values}
        return values

    @model_validator(mode="after")
    def _agrees_with_dataset(self) -> DatasetConfig:
        if self.name not in DATASETS:
            raise ValueError(f"name: unknown dataset '{self.name}'; choose one of {sorted(DATASETS)}")
        for c in self.eval_exclude or ():
            if not 0 <= c < self.nclass:
                raise ValueError(f"eval_exclude: class {c} is outside [0, {self.nclass})")
        return self

    @property
    def nclass(self) -> int:
        """The dataset's class count (util/catalog.py): one legal value per dataset, so not a key."""
        return DATASETS[self.name].nclass

    @property
    def excluded_classes(self) -> tuple[int, ...]:
        return tuple(self.eval_exclude) if self.eval_exclude is not None else DATASETS[self.name].eval_exclude

    def moved_root_hint(self) -> str:
        """For an error about tiles not found: where the default root moved from, if `root` is that default, is
        not there, and the old default folder is (else '')."""
        before = absolute_path(TILES_BEFORE.format(name=self.name))
        root = absolute_path(self.root)
        if root != absolute_path(TILES_DEFAULT.format(name=self.name)) or os.path.exists(root) \
                or not os.path.isdir(before):
            return ""
        return (f"; the default dataset.root moved from {TILES_BEFORE.format(name=self.name)} to "
                f"{TILES_DEFAULT.format(name=self.name)}: set dataset.root={before}, or move that folder to {root}")


class ModelConfig(Section):
    # DINOv2 size of the student encoder; `tiny` is a small ViT for tests and the demo.
    backbone: Backbone = "small"
    # Official DINOv2 checkpoint for the student; null starts from random weights (tests, demo).
    pretrained: PathText | None = "pretrained/dinov2_small.pth"
    lock_backbone: bool = False
    # Recompute encoder blocks in the backward pass: less memory, ~30 % more time.
    grad_checkpointing: bool = False


class DinoTeacherConfig(Section):
    enabled: bool = True
    arch: Backbone = "base"
    weights: PathText | None = "pretrained/dinov2_base.pth"
    # The reference runs DINOv2-B in fp32.
    precision: TeacherPrecision = "fp32"


class ClipTeacherConfig(Section):
    enabled: bool = True
    arch: Literal["ViT-L-14", "tiny"] = "ViT-L-14"
    weights: PathText | None = "pretrained/ViT-L-14.pt"
    input_size: int = Field(224, gt=0)
    # The reference feeds CLIP ImageNet-normalised pixels; true re-normalises with CLIP's own mean/std.
    renormalize: bool = False
    # The reference runs CLIP in fp16 (OpenAI's clip.load keeps fp16 weights on a GPU).
    precision: TeacherPrecision = "fp16"

    @field_validator("input_size")
    @classmethod
    def _multiple_of_patch(cls, v: int) -> int:
        if v % PATCH_SIZE:
            raise ValueError(f"must be a multiple of the patch size {PATCH_SIZE}")
        return v


class TeachersConfig(Section):
    dino: DinoTeacherConfig = DinoTeacherConfig()
    clip: ClipTeacherConfig = ClipTeacherConfig()

    @property
    def enabled(self) -> tuple[str, ...]:
        return tuple(name for name in ("dino", "clip") if getattr(self, name).enabled)


class DistillConfig(Section):
    translator_hidden: int = Field(1024, gt=0)
    # L_dis = sum over teachers of weight * MSE(translated student feature, teacher feature).
    weights: dict[TeacherName, float] = {"dino": 0.5, "clip": 0.5}
    # f4' = student * f + dino * P_d(T_d(f)) + clip * P_c(up(T_c(f224))). Every teacher weight 0 is
    # "distillation without fusion": the 4th DPT input is f itself (no projections are built), and the student
    # weight must then be 1 (Config checks it where the method distils), so that no setting scales f silently.
    fusion_weights: dict[Literal["student", "dino", "clip"], float] = {"student": 0.8, "dino": 0.1, "clip": 0.1}

    @property
    def fuses(self) -> bool:
        """Whether any teacher's translated features are fused into the 4th DPT input."""
        return any(w != 0.0 for k, w in self.fusion_weights.items() if k != "student")

    @field_validator("weights", "fusion_weights")
    @classmethod
    def _non_negative(cls, v: dict[str, float]) -> dict[str, float]:
        for k, w in v.items():
            if w < 0:
                raise ValueError(f"{k}: weight {w} is negative")
        return v


class FeatureDropConfig(Section):
    """UniMatch V2's complementary channel dropout on the encoder features of the two strong views."""

    channel_p: float = Field(0.5, ge=0, le=1)
    pair_fraction: float = Field(0.5, ge=0, le=1)


class LossWeights(Section):
    """Weights of the loss terms: the loss is (x * L_x + u * L_u + dis * L_dis) / (sum of those present)."""

    x: float = Field(1.0, ge=0)
    u: float = Field(1.0, ge=0)
    dis: float = Field(1.0, ge=0)


class TrainConfig(Section):
    # A registered method (methods/): supervised | fixmatch | unimatch_v2 | rs_mtdf.
    method: str = "rs_mtdf"
    epochs: int = Field(60, gt=0)
    # Labelled crops per optimizer step over all processes (the unlabelled batch is as large): the published
    # protocol's 8 per GPU on 4 GPUs. Fewer processes reach it by accumulating gradients over several forwards,
    # more by smaller forwards; the schedule (steps, lr, EMA) is then the same on any number of GPUs. null:
    # train.batch_size per process, so that the number of processes sets the global batch.
    global_batch: int | None = Field(32, gt=0)
    # Crops per process and forward (labelled, and as many unlabelled): at most this many.
    batch_size: int = Field(8, gt=0)
    lr: float = Field(5e-6, gt=0)
    # Every trainable parameter outside the encoder uses lr * lr_multi.
    lr_multi: float = Field(40.0, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    poly_power: float = Field(0.9, ge=0)
    conf_thresh: float = Field(0.95, ge=0, le=1)
    ema_cap: float = Field(0.996, ge=0, le=1)
    # The loss is the weighted mean of its terms: (x*L_x + u*L_u + dis*L_dis) / (x + u + dis).
    loss_weights: LossWeights = LossWeights()
    feature_drop: FeatureDropConfig = FeatureDropConfig()
    precision: Precision = "auto"
    seed: int = Field(42, ge=0)
    num_workers: int = Field(4, ge=0)
    eval_interval: int = Field(1, gt=0)
    # Also save latest.pth every this many iterations (0: only at the end of each epoch).
    checkpoint_interval: int = Field(0, ge=0)
    # best.pth keeps the epoch of the best val mIoU of these weights (ties: the later epoch). The reference
    # selects by the student, and its evaluation scripts load the student.
    best_by: Literal["student", "ema"] = "student"
    # The classes of that val mIoU: all of them, as the authors' in-training validation (clutter and unknown
    # included), or those the test scores (dataset.eval_exclude).
    best_on: Literal["all_classes", "scored_classes"] = "all_classes"
    # Only for method `supervised`: `reference` trains as the authors' supervised.py (batches doubled: 2 x
    # global_batch labelled crops a step, 2 x batch_size a forward; an epoch of max(labelled tiles,
    # supervised_epoch_samples) draws from the labelled list, repeated where shorter); `same_iterations` uses
    # the semi-supervised schedule (an epoch as long as the unlabelled list), so that every method makes the
    # same number of steps of the same labelled batch.
    supervised_protocol: Literal["reference", "same_iterations"] = "reference"
    supervised_epoch_samples: int = Field(3000, gt=0)
    # Draws per epoch from each list, for every method; null: the published rule (one pass over the unlabelled
    # list; the reference supervised epoch above). For short experiments on large pools (the learning check).
    epoch_samples: int | None = Field(None, gt=0)
    skip_nonfinite: bool = False
    log_interval: int = Field(20, gt=0)
    compile: bool = False
    channels_last: bool = True
    # Run train.precision on a CPU too (bf16/fp16 autocast, teachers in teachers.*.precision, channels-last):
    # slow on most CPUs; for exercising the GPU's precision paths without a GPU.
    cpu_autocast: bool = False

    @field_validator("method")
    @classmethod
    def _registered(cls, v: str) -> str:
        names = method_names()
        if v not in names:
            raise ValueError(f"unknown method '{v}'; choose one of {', '.join(names)}")
        return v

    @field_validator("betas")
    @classmethod
    def _betas(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= b < 1 for b in v):
            raise ValueError("must be two numbers in [0, 1)")
        return v


class AugmentConfig(Section):
    scale_range: tuple[float, float] = (0.5, 2.0)
    hflip_p: float = Field(0.5, ge=0, le=1)
    color_jitter: tuple[float, float, float, float] = (0.5, 0.5, 0.5, 0.25)
    color_jitter_p: float = Field(0.8, ge=0, le=1)
    grayscale_p: float = Field(0.2, ge=0, le=1)
    blur_p: float = Field(0.5, ge=0, le=1)
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    cutmix_p: float = Field(0.5, ge=0, le=1)
    # Box area as a fraction of the crop, and its aspect ratio range.
    cutmix_area: tuple[float, float] = (0.02, 0.4)
    cutmix_aspect: tuple[float, float] = (0.3, 1 / 0.3)

    @field_validator("scale_range")
    @classmethod
    def _scale(cls, v: tuple[float, float]) -> tuple[float, float]:
        return _check_range(v, 1e-3, 100.0)

    @field_validator("blur_sigma")
    @classmethod
    def _sigma(cls, v: tuple[float, float]) -> tuple[float, float]:
        return _check_range(v, 1e-6, 100.0)

    @field_validator("cutmix_area")
    @classmethod
    def _area(cls, v: tuple[float, float]) -> tuple[float, float]:
        return _check_range(v, 0.0, 1.0)

    @field_validator("cutmix_aspect")
    @classmethod
    def _aspect(cls, v: tuple[float, float]) -> tuple[float, float]:
        return _check_range(v, 1e-3, 1e3)

    @field_validator("color_jitter")
    @classmethod
    def _jitter(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if min(v) < 0 or v[3] > 0.5:
            raise ValueError("brightness, contrast, saturation must be >= 0 and hue within [0, 0.5]")
        return v


class EvalConfig(Section):
    mode: Literal["original", "sliding_window"] = "original"
    # Sliding window size and stride in pixels; null: window = crop_size, stride = 2/3 of the window.
    window: int | None = Field(None, gt=0)
    stride: int | None = Field(None, gt=0)
    # Images per forward in `original` mode; windows per forward in `sliding_window` mode.
    batch_size: int = Field(16, gt=0)
    # How overlapping sliding windows are blended: `uniform` averages their softmax (the reference's
    # scoring, what eval.py scores with); `gaussian` weights each window by nnU-Net's Gaussian importance
    # map (sigma = window / 8), so window borders count little and leave no seams. predict.py uses
    # `gaussian` (and mode `sliding_window`) unless its command line says otherwise (--blend, --mode).
    blend: Literal["uniform", "gaussian"] = "uniform"
    # Which weights of a checkpoint to score; null: those the checkpoint was selected by (train.best_by;
    # the student for checkpoints that do not say, such as the authors').
    weights: Literal["student", "ema"] | None = None
    # Images with ground truth and prediction written to TensorBoard at each evaluation.
    num_visualize: int = Field(4, ge=0)

    @field_validator("window")
    @classmethod
    def _window(cls, v: int | None) -> int | None:
        if v is not None and v % PATCH_SIZE:
            raise ValueError(f"must be a multiple of the patch size {PATCH_SIZE}")
        return v


class Config(Section):
    dataset: DatasetConfig = DatasetConfig()
    model: ModelConfig = ModelConfig()
    teachers: TeachersConfig = TeachersConfig()
    distill: DistillConfig = DistillConfig()
    train: TrainConfig = TrainConfig()
    augment: AugmentConfig = AugmentConfig()
    eval: EvalConfig = EvalConfig()
    # Where a run writes checkpoints, logs and the resolved config; {dataset}, {method}, {split} are filled in.
    save_path: PathText = "exp/{dataset}/{method}/{split}"

    @model_validator(mode="after")
    def _method_and_teachers_agree(self) -> Config:
        enabled = self.teachers.enabled
        if method_distils(self.train.method) and not enabled:
            raise ValueError(f"teachers: method {self.train.method} needs at least one enabled teacher "
                             f"(or use fixmatch)")
        for name in ("dino", "clip"):
            if name not in enabled and self.distill.fusion_weights.get(name, 0.0) != 0.0:
                raise ValueError(
                    f"distill.fusion_weights.{name}: is {self.distill.fusion_weights[name]} but "
                    f"teachers.{name}.enabled is false; set it to 0 and give its share to another term")
        student = self.distill.fusion_weights.get("student", 0.0)
        if self.distill_teachers and not self.distill.fuses and student != 1.0:
            # Without fusion the segmenter uses f as it is: a student weight would scale it only in name.
            raise ValueError(f"distill.fusion_weights.student: is {student} but every teacher weight is 0 (no "
                             f"fusion), which leaves the features as they are; set it to 1")
        return self

    @field_validator("save_path")
    @classmethod
    def _known_placeholders(cls, v: str) -> str:
        try:
            v.format(dataset="d", method="m", split="s")
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(f"'{v}' has a placeholder other than {{dataset}}, {{method}}, {{split}} ({e})") from None
        return v

    @property
    def run_dir(self) -> Path:
        return Path(self.save_path.format(dataset=self.dataset.name, method=self.train.method,
                                          split=self.dataset.split))

    @property
    def weight_files(self) -> dict[str, str | None]:
        """{config key: path} of every weight file this config reads (None where it starts from random weights)."""
        files = {"model.pretrained": self.model.pretrained}
        for name in self.distill_teachers:
            files[f"teachers.{name}.weights"] = getattr(self.teachers, name).weights
        return files

    @property
    def distill_teachers(self) -> tuple[str, ...]:
        """Teachers whose translators the model carries: the enabled ones when the method distils."""
        return self.teachers.enabled if method_distils(self.train.method) else ()

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def replace(self, changes: dict[str, Any]) -> Config:
        """A copy with dotted keys changed, validated as a loaded file is: cfg.replace({"eval.window": 28}).

        A bad key or value is the same one-line ConfigError naming the key.
        """
        raw = self.to_dict()
        for key, value in changes.items():
            _set(raw, key.split("."), value, f"Config.replace '{key}'")
        return _validate(raw, "Config.replace")


# ----------------------------------------------------------------------------------------------------------
# Comparing configs (resuming a run, scoring a checkpoint)

# Keys that change what the model computes from an image (its parameters or its forward): a checkpoint is
# only meaningful under the values it was trained with. dataset.name decides the class count.
MODEL_KEYS = ("dataset.name", "model.backbone", "train.method", "teachers.dino.enabled", "teachers.dino.arch",
              "teachers.clip.enabled", "teachers.clip.arch", "teachers.clip.input_size", "teachers.clip.renormalize",
              "distill.translator_hidden", "distill.fusion_weights")
# Keys that change neither the model nor what it is trained on (where files go, speed switches, logging): a
# run may resume under other values without a word, and runs that differ only in them are the same setting.
FREE_KEYS = ("save_path", "model.pretrained", "model.grad_checkpointing", "train.num_workers", "train.log_interval",
             "train.checkpoint_interval", "train.compile", "train.channels_last", "train.skip_nonfinite",
             "eval.batch_size", "eval.num_visualize")
# Keys renamed since runs saved their config: {old dotted key: new}. A config file or override that uses an old
# key is refused, naming the new one; a run's saved config (its config.yaml, its checkpoints' config) written
# before a rename is read with the old key taken for the new one (`upgrade_saved`).
RENAMED_KEYS = {"dataset.splits": "dataset.lists"}
# The keys that hold file or folder paths: absolute once loaded.
PATH_KEYS = ("dataset.root", "dataset.lists", "model.pretrained", "teachers.dino.weights", "teachers.clip.weights",
             "save_path")


def flatten(raw: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'train': {'lr': 1}} -> {'train.lr': 1}."""
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def config_differences(theirs: dict[str, Any], ours: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{dotted key: (their value, our value)} for every key whose resolved value differs."""
    a, b = flatten(theirs), flatten(ours)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def model_differences(theirs: dict[str, Any], ours: dict[str, Any],
                      keys: tuple[str, ...] = MODEL_KEYS) -> dict[str, tuple[Any, Any]]:
    """The differences under `keys`; teacher and distillation keys only count where a method distils."""
    distils = any(method_distils(flatten(c).get("train.method")) for c in (theirs, ours))
    diffs = {k: v for k, v in config_differences(theirs, ours).items()
             if under(k, keys) and (distils or not k.startswith(("teachers.", "distill.")))}
    # The most telling first: in the order of `keys` (dataset, backbone and method lead).
    rank = {k: next(i for i, p in enumerate(keys) if under(k, (p,))) for k in diffs}
    return dict(sorted(diffs.items(), key=lambda item: rank[item[0]]))


def setting_differences(theirs: dict[str, Any], ours: dict[str, Any],
                        also_free: tuple[str, ...] = ()) -> dict[str, tuple[Any, Any]]:
    """The differences outside FREE_KEYS (and `also_free`): what makes two runs train differently."""
    return {k: v for k, v in config_differences(theirs, ours).items() if not under(k, FREE_KEYS + also_free)}


def under(key: str, prefixes: tuple[str, ...]) -> bool:
    """Whether dotted `key` is one of `prefixes` or inside one of them."""
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def describe_differences(diffs: dict[str, tuple[Any, Any]], limit: int = 4) -> str:
    """'train.lr=5e-06 (this config: 1e-05), augment.hflip_p=0.5 (this config: 0.0) (+2 more)'."""
    shown = [f"{k}={a} (this config: {b})" for k, (a, b) in list(diffs.items())[:limit]]
    more = f" (+{len(diffs) - limit} more)" if len(diffs) > limit else ""
    return ", ".join(shown) + more


# ----------------------------------------------------------------------------------------------------------
# Loading


def _field_names(model: type[BaseModel], path: tuple[str, ...]) -> list[str]:
    """Valid keys at `path` (the parent of a rejected key), for suggestions."""
    for key in path:
        annotation = model.model_fields[key].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def _closest(word: str, valid: list[str]) -> str | None:
    """The valid key `word` most likely stands for, if any is close enough to suggest."""
    # difflib's own default cutoff: at 0.5, 'nclass' (not a key: the catalogue decides it) would get 'lists'.
    close = difflib.get_close_matches(word, valid, n=1, cutoff=0.6)
    return close[0] if close else None


def _format_error(err: ErrorDetails, source: str) -> str:
    loc = tuple(str(p) for p in err["loc"])
    key = ".".join(loc)
    if err["type"] == "extra_forbidden" and key in RENAMED_KEYS:
        return f"{source}: unknown key '{key}' (did you mean '{RENAMED_KEYS[key]}'? it was renamed)"
    if err["type"] == "extra_forbidden":
        valid = _field_names(Config, loc[:-1])
        close = _closest(loc[-1], valid)
        prefix = ".".join(loc[:-1] + (close,)) if close else None
        hint = f" (did you mean '{prefix}'?)" if prefix else f" (valid keys here: {', '.join(valid)})"
        return f"{source}: unknown key '{key}'{hint}"
    message = err["msg"].removeprefix("Value error, ")
    # Cross-field checks name their own key as "sub.key: message"; attach it to the section's path.
    head, sep, rest = message.partition(": ")
    if sep and head.replace(".", "").replace("_", "").isalnum() and " " not in head:
        key, message = ".".join(p for p in (key, head) if p), rest
        err = {**err, "input": None}
    value = err.get("input")
    shown = "" if value is None or isinstance(value, dict) else f" (got {value!r})"
    return f"{source}: invalid value for '{key or 'config'}'{shown}: {message}"


def _validate(raw: dict[str, Any], source: str) -> Config:
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_error(e.errors()[0], source)) from None


def parse_override(text: str) -> tuple[list[str], Any]:
    """`train.lr=1e-4` -> (['train', 'lr'], 1e-4); the value is read as YAML."""
    key, sep, value = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"command line: '{text}' is not an override of the form section.key=value")
    if value == "":
        raise ConfigError(f"command line override '{text}': the value is empty (an unset shell variable?); "
                          f"write {key}=null for none")
    try:
        parsed = yaml.load(value, Loader=_StrictLoader)
    except yaml.YAMLError:
        parsed = value
    return key.split("."), parsed


def _check_override_key(path: list[str], where: str) -> None:
    """Reject an override whose key the schema does not have, naming the closest valid key."""
    if ".".join(path) in RENAMED_KEYS:
        raise ConfigError(f"{where}: unknown key '{'.'.join(path)}' (did you mean '{RENAMED_KEYS['.'.join(path)]}'? "
                          f"it was renamed)")
    for depth, part in enumerate(path):
        valid = _field_names(Config, tuple(path[:depth]))
        if not valid:
            return  # below a free-form mapping such as distill.weights: the schema checks the value
        if part not in valid:
            close = _closest(part, valid)
            hint = (f" (did you mean '{'.'.join(path[:depth] + [close])}'?)" if close
                    else f" (valid keys here: {', '.join(valid)})")
            raise ConfigError(f"{where}: unknown key '{'.'.join(path)}'{hint}")


def _set(raw: dict[str, Any], path: list[str], value: Any, where: str,
         resolved: dict[str, Any] | None = None) -> None:
    """raw[path[0]][path[1]]... = value, making sections on the way; errors start with `where`.

    A key inside a mapping value (distill.fusion_weights.clip) that `raw` does not spell out changes that
    entry of the mapping `resolved` holds (the file's values with the defaults), not a mapping of it alone.
    """
    _check_override_key(path, where)
    node, resolved_node = raw, resolved
    for depth, part in enumerate(path[:-1]):
        resolved_node = resolved_node.get(part) if isinstance(resolved_node, dict) else None
        is_mapping_value = not _field_names(Config, tuple(path[:depth + 1]))
        if part not in node and is_mapping_value and isinstance(resolved_node, dict):
            node[part] = dict(resolved_node)
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{where}: '{part}' is a value, not a section")
        node = child
    node[path[-1]] = value


def apply_overrides(raw: dict[str, Any], overrides: list[str],
                    resolved: dict[str, Any] | None = None) -> dict[str, Any]:
    """Set every `key.sub=value` of `overrides` in `raw`, in order: a later override of a key wins. `resolved`:
    what `raw` resolves to, for keys inside mapping values (see _set)."""
    for text in overrides:
        path, value = parse_override(text)
        _set(raw, path, value, f"command line override '{text}'", resolved)
    return raw


class _StrictLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping (safe_load keeps the last silently)."""


def _mapping_without_duplicates(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key '{key}' appears twice (lines {seen[key] + 1} and {key_node.start_mark.line + 1})",
                key_node.start_mark)
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """A YAML mapping from a UTF-8 file (a byte-order mark is fine); duplicate keys and empty files are errors."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    try:
        raw = yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{where} is not valid YAML ({getattr(e, 'problem', e)})") from None
    if raw is None:
        raise ConfigError(f"{path} is empty; start from one of configs/*.yaml, or write {{}} to take every default")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, not {type(raw).__name__}")
    return raw


# A run folder: its resolved config beside its progress (util/run.py writes both).
RUN_CONFIG, RUN_PROGRESS = "config.yaml", "progress.json"


def upgrade_saved(raw: dict[str, Any]) -> dict[str, Any]:
    """A run's saved config (nested mappings) with every key renamed since (RENAMED_KEYS) under its new name;
    where both are there, the new one stays. The one place old saved configs are mapped to today's keys."""
    raw = copy.deepcopy(raw)
    for old, new in RENAMED_KEYS.items():
        *old_sections, old_key = old.split(".")
        holder: Any = raw
        for part in old_sections:
            holder = holder.get(part) if isinstance(holder, dict) else None
        if not isinstance(holder, dict) or old_key not in holder:
            continue
        value = holder.pop(old_key)
        *new_sections, new_key = new.split(".")
        target = raw
        for part in new_sections:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                break
        else:
            target.setdefault(new_key, value)
    return raw


def is_run_config(path: str | os.PathLike) -> bool:
    """Whether `path` is the config.yaml of a run folder (beside its progress.json): a saved, resolved config."""
    path = Path(path).expanduser()
    return path.name == RUN_CONFIG and (path.parent / RUN_PROGRESS).is_file()


def read_run_config(path: str | os.PathLike) -> dict[str, Any]:
    """A run's saved config.yaml as a mapping, in today's keys (`upgrade_saved`)."""
    return upgrade_saved(read_yaml(path))


def load_config(path: str | os.PathLike, overrides: list[str] | None = None) -> Config:
    """Read a YAML config, validate it, apply `key.sub=value` overrides, validate again, make paths absolute.

    A run folder's config.yaml (`is_run_config`) is read in today's keys, so that a run saved before a key was
    renamed can still be scored, exported and resumed from it; anywhere else an old key is refused.
    """
    raw = read_run_config(path) if is_run_config(path) else read_yaml(path)
    base = _validate(raw, str(path))
    cfg = _validate(apply_overrides(raw, list(overrides or []), base.to_dict()), f"{path} with overrides")
    return with_absolute_paths(cfg)


def absolute_path(text: str) -> str:
    """`text` with `~` expanded and made absolute against the current folder (the string form of a path)."""
    return os.path.abspath(os.path.expanduser(text))


def with_absolute_paths(cfg: Config) -> Config:
    """`cfg` with every path key (PATH_KEYS) absolute: what a run saves, so that it reads the same files from
    any folder."""
    flat = flatten(cfg.to_dict())
    changes = {key: absolute_path(flat[key]) for key in PATH_KEYS if flat[key] is not None}
    return cfg.replace(changes) if any(flat[k] != v for k, v in changes.items()) else cfg


def save_config(cfg: Config, path: str | os.PathLike, note: str = "") -> None:
    """Write the resolved configuration (every value, defaults included) as YAML, atomically; `note` becomes
    a comment above it."""
    header = "".join(f"# {line}\n" for line in note.splitlines())
    write_text(path, header + yaml.safe_dump(cfg.to_dict(), sort_keys=False))


# ----------------------------------------------------------------------------------------------------------
# The command that printed a resolved config moved to train.py (it needs the registered methods)


def main(argv: list[str] | None = None) -> int:
    """`python -m util.config` was the way to see a resolved config: say where it went."""
    import sys

    args = " ".join(argv if argv is not None else sys.argv[1:])
    print(f"error: python -m util.config moved: run python train.py {args} --get all (or --get KEY, --get run_dir)",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
