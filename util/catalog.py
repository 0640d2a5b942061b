"""What every layer agrees on: each dataset's classes, palette and scoring exclusions, and the pixel conventions.

Plain data, no torch: the config validates dataset names and class indices against it, the model and the
methods read the label and normalisation conventions from it. An entry is the pure-data half of a dataset:
its spec (dataset/spec.py: finder, label, crop and split rules) holds it, but it lives here because the
layers below dataset/ need it and may not import dataset/. An entry without a spec is a dataset of one's own
tiles and lists, which training, evaluation and prediction accept.
"""

from dataclasses import dataclass

IGNORE_INDEX = 255
# Value of the unlabelled `ignore_mask` on crop padding (UniMatch's convention); 0 elsewhere. The
# unlabelled loss counts only pixels where ignore_mask != UNLABELED_PAD.
UNLABELED_PAD = 254
# ImageNet statistics: the student and (as in the reference) both teachers see images normalised this way.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    class_names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    # Classes whose ground truth is left out of the score by the DWL evaluation protocol (docs/method.md §5).
    eval_exclude: tuple[int, ...] = ()
    # Ground resolution of the dataset's imagery in cm per pixel, as its publishers describe it (prepare cuts
    # tiles without resampling, so a model trained on them expects this): what deploy/export.py writes into an
    # ONNX file's `resolution` for QGIS's Deepness plugin, which resamples a scene to it before tiling.
    resolution_cm: float | None = None

    @property
    def nclass(self) -> int:
        return len(self.class_names)


LOVEDA = DatasetInfo(
    name="loveda",
    class_names=("background", "building", "road", "water", "barren", "forest", "agriculture"),
    # mmsegmentation's LoveDA palette, which users of the dataset know.
    palette=((255, 255, 255), (255, 0, 0), (255, 255, 0), (0, 0, 255),
             (159, 129, 183), (0, 255, 0), (255, 195, 128)),
    # 0.3 m per pixel, as the dataset's README (github.com/Junjue-Wang/LoveDA; Wang et al., NeurIPS 2021 Datasets and
    # Benchmarks) gives it for all its images.
    resolution_cm=30.0,
)

POTSDAM = DatasetInfo(
    name="potsdam",
    class_names=("impervious_surface", "building", "low_vegetation", "tree", "car", "clutter"),
    # The colours of the official ISPRS label images.
    palette=((255, 255, 255), (0, 0, 255), (0, 255, 255), (0, 255, 0), (255, 255, 0), (255, 0, 0)),
    eval_exclude=(5,),
    # Ground sampling distance 5 cm: the ISPRS 2D Semantic Labeling Contest's Potsdam page
    # (isprs.org/resources/datasets/benchmarks/UrbanSemLab/2d-sem-label-potsdam.aspx), for the true orthophotos.
    resolution_cm=5.0,
)

DEEPGLOBE = DatasetInfo(
    name="deepglobe",
    class_names=("urban", "agriculture", "rangeland", "forest", "water", "barren", "unknown"),
    # The colours of the official DeepGlobe Land Cover masks.
    palette=((0, 255, 255), (255, 255, 0), (255, 0, 255), (0, 255, 0), (0, 0, 255),
             (255, 255, 255), (0, 0, 0)),
    eval_exclude=(6,),
    # 50 cm per pixel (DigitalGlobe satellite imagery), as the challenge's data description gives it (DeepGlobe Land
    # Cover Classification Challenge; Demir et al., CVPR Workshops 2018, arXiv 1805.06561).
    resolution_cm=50.0,
)

DATASETS: dict[str, DatasetInfo] = {info.name: info for info in (LOVEDA, POTSDAM, DEEPGLOBE)}
