"""The learning check: data, stand-in teachers and the comparison runs of run.sh beside this file.

    python experiments/learning_check/check.py data     --work exp/learning_check   # scenes, tiles, lists (+ 100 %)
    python experiments/learning_check/check.py teachers --work exp/learning_check   # pretrain the stand-ins
    python experiments/learning_check/check.py runs     --work exp/learning_check [--quick] [--parallel 2]
    python experiments/learning_check/check.py summary  --work exp/learning_check   # test mIoU per run
    python experiments/learning_check/check.py diagnose --work exp/learning_check   # pseudo-labels, probes

Each step skips what exists already, so a second invocation reuses the scenes and the teachers and only
runs what is missing; what exists is checked against what this would make, and a difference is refused in
one line. See README.md beside this file for why the data, teachers and schedule are what they are.

Teachers. Stand-ins for DINOv2-B and CLIP ViT-L/14 must *know* something the student cannot learn from a
handful of labelled tiles: here, what every class looks like across domains (seasons, sensors, scales).
They are tiny ViTs of the repository's own `tiny` architectures, pretrained with supervision on a large pool
of domain-shifted scenes drawn with another seed than the train/val/test scenes (never those scenes), with
the strong view's colour augmentation, through a linear per-token head on exactly the feature the trainer distils
(DINO: last block after the final LayerNorm, on the 84-px crop; CLIP: last residual block before ln_post,
on the crop resized to 42 px). The head is dropped; the encoders are saved in the official file layouts
(DINOv2: plain state dict with DINOv2's key names and a 37 x 37 position grid; CLIP: OpenAI's `visual.*`
names) and loaded by the trainer through model/teachers.py's normal path. Random teachers of the same
architectures, in the same formats, are the control.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:  # run as a file: the repository root, not scripts/, first
    sys.path[0] = str(Path(__file__).resolve().parents[2])

import argparse
import json
import math
import os
import shlex
import subprocess
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import methods  # noqa: F401  (registers the training methods a config may name)
from dataset.images import open_labels, rgb_array
from dataset.splits import read_list, split_file, training_list_digests
from dataset.transforms import colour_augment, normalize
from eval.metrics import ConfusionMatrix
from util.cli import path_arg, run_main
from util.config import AugmentConfig, describe_differences, load_config
from util.errors import ConfigError, DataError
from util.io import atomic_path, check_output_folder, write_text
from util.run import protocol_evaluation, read_progress, saved_setting_differences

ROOT = Path(__file__).resolve().parents[2]
CONFIG = Path(__file__).resolve().parent / "config.yaml"
NCLASS = 7
SCENE_SIZE = 168        # LoveDA-layout scenes; their quadrants are the 84-px tiles
TRAIN_SCENES = 400      # per domain (Rural, Urban) of Train: 3,200 train tiles, so that 1 % is 32 (Potsdam's 1 %)
VAL_SCENES = 100        # per domain of Val: 800 tiles, halved into 400 val and 400 test
# Labelled shares: 4, 32 and 160 tiles. 0.125 % (4 tiles, 2 per domain, within 1 %) is the first design's regime.
SPLITS = ("0.125", "1", "5")
DATA_SEED = 0
POOL_SEED = 1000        # the teachers' pool: another seed, so other scenes than train/val/test
POOL_SCENES = 1000      # -> 4000 tiles; the last 10 % are held out for the linear-probe score
CROP = 84
CLIP_INPUT = 42
# The student stand-in (for DINOv2-S): the DINO stand-in's pretraining, a fifth as long, so it knows less.
STUDENT_STEPS = 300
# The teachers learn under the colour changes the student's strong view makes (the method's defaults).
STRONG_COLOUR = AugmentConfig()

# Distillation without fusion: every teacher's fusion weight 0.
NO_FUSION = "distill.fusion_weights={student: 1, dino: 0, clip: 0}"


# ----------------------------------------------------------------------------------------------------------
# Data


def made_with(record: Path, wanted: dict) -> bool:
    """Whether the files `record` describes were made with `wanted`: True if so, False if there are none yet; a
    record of other values is refused in one line (nothing is remade over it, nothing of it is reused)."""
    if not record.is_file():
        return False
    saved = json.loads(record.read_text())
    if saved != wanted:
        changed = ", ".join(f"{k} {saved.get(k)!r} (now {v!r})" for k, v in wanted.items() if saved.get(k) != v)
        raise DataError(f"{record.parent} was made with other values: {changed}; use another --work, or remove "
                        f"it to make it anew")
    return True


def make_data(work: Path) -> None:
    """Raw scenes -> dataset.prepare (tiles, 1/5/10 % lists) -> the 0.125 % (4 tiles) and 100 % splits."""
    splits = work / "splits"
    record = work / "data.json"
    wanted = {"scene_size": SCENE_SIZE, "train_scenes": TRAIN_SCENES, "val_scenes": VAL_SCENES, "seed": DATA_SEED}
    if made_with(record, wanted):
        print(f"data: {splits} exists, made with the same values: kept")
        return
    raw = work / "raw"
    run([sys.executable, "-m", "experiments.learning_check.scenes", "--out", str(raw), "--size", str(SCENE_SIZE),
         "--count", str(TRAIN_SCENES), "--val-count", str(VAL_SCENES), "--seed", str(DATA_SEED)])
    run([sys.executable, "-m", "dataset.prepare", "loveda", "--raw", str(raw), "--out", str(work / "loveda"),
         "--lists", str(splits), "--resplit", "--seed", "0", "--workers", "2"])
    labelled = [line for line in read_list(split_file(splits, "labeled", "1")) if line.strip()]
    everything = sorted(set(labelled) | {line for line in read_list(split_file(splits, "unlabeled", "1"))
                                         if line.strip()})
    # 4 tiles within 1 %: the first two of each domain.
    four = [line for domain in ("rural", "urban") for line in [x for x in labelled if f"_{domain}_" in x][:2]]
    write_split(splits, "0.125", four, [line for line in everything if line not in four])
    write_split(splits, "100", everything, [])
    write_text(record, json.dumps(wanted) + "\n")
    print(f"data: {len(everything)} train tiles; 0.125 % ({len(four)} tiles) and 100 % splits written")


def write_split(splits: Path, percent: str, labeled: list[str], unlabeled: list[str]) -> None:
    """<splits>/<percent>/labeled.txt and unlabeled.txt, written atomically."""
    split_file(splits, "labeled", percent).parent.mkdir(exist_ok=True)
    write_text(split_file(splits, "labeled", percent), "".join(line + "\n" for line in labeled))
    write_text(split_file(splits, "unlabeled", percent), "".join(line + "\n" for line in unlabeled))


def run(cmd: list[str], **kw) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT, **kw)


# ----------------------------------------------------------------------------------------------------------
# Teachers


def pool_tiles(seed: int, scenes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The teachers' pool as 112-px quadrant tiles: uint8 images (N, 3, 112, 112) and labels (N, 112, 112)."""
    from experiments.learning_check.scenes import pool

    images, labels = pool(seed, SCENE_SIZE, scenes)
    h = SCENE_SIZE // 2
    quads = [(slice(0, h), slice(0, h)), (slice(0, h), slice(h, None)), (slice(h, None), slice(0, h)),
             (slice(h, None), slice(h, None))]
    img = np.concatenate([images[:, a, b] for a, b in quads])  # quadrants of a scene stay 1 scene apart...
    lab = np.concatenate([labels[:, a, b] for a, b in quads])
    order = np.concatenate([np.arange(scenes) + k * scenes for k in range(4)]).reshape(4, scenes).T.ravel()
    # ... then reordered so that the 4 quadrants of a scene are adjacent: holding out the last tiles holds
    # out whole scenes.
    return torch.from_numpy(img[order]).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(lab[order]).long()


def augment(img: torch.Tensor, lab: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Rescale x[0.6, 1.6] (one factor per batch), crop/pad to the crop, flips, the strong view's colour jitter."""
    s = 0.6 + torch.rand((), generator=g).item()
    size = int(round(CROP * s))
    img = F.interpolate(img.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=s < 1)
    lab = F.interpolate(lab[:, None].float(), size=(size, size), mode="nearest")[:, 0].long()
    if size >= CROP:
        top, left = (int(torch.randint(0, size - CROP + 1, (), generator=g)) for _ in range(2))
        img, lab = img[..., top:top + CROP, left:left + CROP], lab[:, top:top + CROP, left:left + CROP]
    else:
        pad = CROP - size
        img = F.pad(img, (0, pad, 0, pad), value=0.0)
        lab = F.pad(lab, (0, pad, 0, pad), value=255)
    if torch.rand((), generator=g) < 0.5:
        img, lab = img.flip(-1), lab.flip(-1)
    if torch.rand((), generator=g) < 0.5:
        img, lab = img.flip(-2), lab.flip(-2)
    return colour_jitter(img / 255, g), lab


def colour_jitter(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """The strong view's colour augmentation (dataset.transforms.colour_augment with the method's defaults),
    sample by sample; x in [0, 1], returns uint8."""
    rgb = (x * 255).round().clamp(0, 255).to(torch.uint8)
    return torch.stack([colour_augment(img, STRONG_COLOUR, g) for img in rgb])


def soft_targets(lab: torch.Tensor, grid: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token class fractions (B, grid*grid, C) of the labelled pixels under each token, and their weight."""
    valid = (lab != 255)
    onehot = F.one_hot(lab.clamp(max=NCLASS - 1), NCLASS).float() * valid[..., None]
    onehot = onehot.permute(0, 3, 1, 2)
    frac = F.adaptive_avg_pool2d(onehot, grid)  # (B, C, g, g)
    weight = frac.sum(1)  # share of labelled pixels
    frac = frac / weight.clamp_min(1e-6)[:, None]
    return frac.flatten(2).transpose(1, 2), weight.flatten(1)


class Probe(nn.Module):
    """A frozen-feature encoder (trained here) plus the linear per-token head used to train it."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        from timm.layers import LayerScale

        from model.encoder import SIZES
        from model.teachers import CLIP_ARCHS, ClipTeacher, DinoTeacher

        self.kind = kind
        self.teacher: DinoTeacher | ClipTeacher
        if kind == "dino":
            self.teacher = DinoTeacher("tiny")
            dim, self.grid = SIZES["tiny"].embed_dim, CROP // 14
            # A short supervised schedule: LayerScale starts at 0.1 rather than DINOv2's 1e-5 so that the
            # blocks contribute from the start (the saved gamma values are whatever training made of them).
            for block in self.teacher.encoder.blocks:
                for layer_scale in (block.ls1, block.ls2):  # timm's Block: Tensor | Module to mypy
                    assert isinstance(layer_scale, LayerScale), type(layer_scale)
                    layer_scale.gamma.data.fill_(0.1)
        else:
            self.teacher = ClipTeacher("tiny", CLIP_INPUT, renormalize=False)
            dim, self.grid = CLIP_ARCHS["tiny"].width, CLIP_INPUT // 14
        self.head = nn.Linear(dim, NCLASS)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Exactly what the trainer distils (model/teachers.py): (B, grid*grid, dim)."""
        return self.teacher(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def probe_miou(model: Probe, img: torch.Tensor, lab: torch.Tensor) -> dict:
    """Linear-probe scores on held-out tiles: token logits upsampled to pixels vs the pixel labels."""
    cm = ConfusionMatrix(NCLASS)
    model.eval()
    with torch.no_grad():
        for i in range(0, len(img), 64):
            x = normalize(img[i:i + 64])
            logits = model(x)
            g = model.grid
            logits = logits.transpose(1, 2).reshape(len(x), NCLASS, g, g)
            pred = F.interpolate(logits, size=lab.shape[-2:], mode="bilinear", align_corners=False).argmax(1)
            cm.update(pred, lab[i:i + 64])
    return rounded_scores(cm)


def rounded_scores(cm: ConfusionMatrix) -> dict:
    """eval.metrics' scores as the probes report them: mIoU and OA (percent) to 2 decimals, per-class IoU to 1
    (None: a class absent from both labels and predictions)."""
    scores = cm.compute()

    def rounded(value: float | None, digits: int) -> float | None:
        return None if value is None else round(value, digits)

    return {"miou": rounded(scores["miou"], 2), "oa": rounded(scores["oa"], 2),
            "iou": [rounded(v, 1) for v in scores["iou"]]}


def train_probe(kind: str, img: torch.Tensor, lab: torch.Tensor, steps: int, seed: int) -> Probe:
    torch.manual_seed(seed)
    model = Probe(kind)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    g = torch.Generator().manual_seed(seed)
    batch = 48
    start = time.time()
    model.train()
    for step in range(steps):
        lr = 1e-3 * min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * step / steps))
        for group in opt.param_groups:
            group["lr"] = lr
        idx = torch.randint(0, len(img), (batch,), generator=g)
        x, y = augment(img[idx], lab[idx], g)
        target, weight = soft_targets(y, model.grid)
        logp = model(normalize(x)).log_softmax(-1)
        loss = -((target * logp).sum(-1) * weight).sum() / weight.sum().clamp_min(1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 200 == 0 or step == steps - 1:
            print(f"  {kind} step {step}/{steps}: loss {loss.item():.3f} ({time.time() - start:.0f} s)", flush=True)
    return model


def colour_probe(img: torch.Tensor, lab: torch.Tensor, held_img: torch.Tensor, held_lab: torch.Tensor) -> dict:
    """How far colour alone labels a pixel across domains: an MLP on one pixel's RGB, trained on the pool."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    px = img.permute(0, 2, 3, 1).reshape(-1, 3)
    y = lab.reshape(-1)
    keep = torch.randperm(len(y), generator=g)[:400_000]
    px, y = px[keep].float() / 255, y[keep]
    mlp = nn.Sequential(nn.Linear(3, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, NCLASS))
    opt = torch.optim.Adam(mlp.parameters(), lr=3e-3)
    for _ in range(1500):
        idx = torch.randint(0, len(y), (4096,), generator=g)
        loss = F.cross_entropy(mlp(px[idx]), y[idx], ignore_index=255)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        hp = held_img.permute(0, 2, 3, 1).reshape(-1, 3).float() / 255
        pred = mlp(hp).argmax(1)
    cm = ConfusionMatrix(NCLASS)
    cm.update(pred, held_lab.reshape(-1))
    return rounded_scores(cm)


def save_dino(encoder: nn.Module, path: Path) -> None:
    """Official DINOv2 layout: the encoder's DINOv2 key names plus mask_token, pos_embed for 37 x 37 patches."""
    state = {k: v.detach().clone().float() for k, v in encoder.state_dict().items()}
    state["mask_token"] = torch.zeros(1, state["cls_token"].shape[-1])
    torch.save(state, path)


def save_clip(visual: nn.Module, path: Path) -> None:
    """OpenAI CLIP layout: visual.* keys (conv1, class_embedding, transformer.resblocks.N..., ln_post, proj)."""
    torch.save({f"visual.{k}": v.detach().clone().float() for k, v in visual.state_dict().items()}, path)


def verify_teachers(folder: Path) -> None:
    """Load both files through the trainer's path (build_teachers) and check they give the saved features."""
    from model.teachers import build_teachers

    cfg = load_config(CONFIG, [f"teachers.dino.weights={folder / 'dinov2_tiny.pth'}",
                               f"teachers.clip.weights={folder / 'clip_tiny.pt'}"])
    teachers = build_teachers(cfg, "cpu")
    assert teachers is not None, "configs/learning_check.yaml (rs_mtdf) distils from both teachers"
    x = torch.randn(2, 3, CROP, CROP)
    out = teachers(x)
    assert out["dino"].shape == (2, (CROP // 14) ** 2, 64), out["dino"].shape
    assert out["clip"].shape == (2, (CLIP_INPUT // 14) ** 2, 96), out["clip"].shape
    print(f"teachers: {folder} loads through build_teachers: dino {tuple(out['dino'].shape)}, "
          f"clip {tuple(out['clip'].shape)}")


def teacher_files(work: Path) -> dict[str, Path]:
    real, rand = work / "teachers_pretrained", work / "teachers_random"
    return {"dino": real / "dinov2_tiny.pth", "clip": real / "clip_tiny.pt",
            "dino_random": rand / "dinov2_tiny.pth", "clip_random": rand / "clip_tiny.pt"}


def make_teacher(work: Path, kind: str, steps: int) -> None:
    """Pretrain one stand-in teacher on the pool, score its linear probe on held-out pool scenes, save it and
    a random-init teacher of the same architecture (the control) in the official format."""
    files = teacher_files(work)
    record = work / "teachers_pretrained" / f"{kind}.recipe.json"
    wanted = {"pool_seed": POOL_SEED, "pool_scenes": POOL_SCENES, "steps": steps, "colour": "dataset.transforms"}
    if made_with(record, wanted) and files[kind].is_file() and files[f"{kind}_random"].is_file():
        print(f"teachers: {kind} exists, made with the same values: kept")
        return
    torch.set_num_threads(1)  # the two teachers train side by side on the 2 cores
    start = time.time()
    img, lab = pool_tiles(POOL_SEED, POOL_SCENES)
    n_held = len(img) // 10
    train_img, train_lab, held_img, held_lab = img[:-n_held], lab[:-n_held], img[-n_held:], lab[-n_held:]
    print(f"teachers: pool of {len(img)} tiles ({POOL_SCENES} scenes, seed {POOL_SEED}); last {n_held} tiles "
          f"({n_held // 4} scenes) held out ({time.time() - start:.0f} s)", flush=True)
    seed = {"dino": 1, "clip": 2}[kind]
    torch.manual_seed(100 + seed)
    random_probe = Probe(kind)  # the control: random init of the same architecture
    model = train_probe(kind, train_img, train_lab, steps, seed)
    result = {"pool_seed": POOL_SEED, "pool_tiles": len(img), "held_out_tiles": n_held, "steps": steps, "batch": 48,
              "probe_held_out": probe_miou(model, held_img, held_lab)}
    for p in random_probe.teacher.parameters():
        p.requires_grad_(False)
    # What the random control 'knows': a linear head trained on its frozen features, half the steps.
    result["random_init_probe_held_out"] = probe_random(random_probe, train_img, train_lab, held_img, held_lab,
                                                        steps // 2, seed)
    if kind == "clip":
        result["colour_only_pixel_mlp_held_out"] = colour_probe(train_img[:1000], train_lab[:1000], held_img,
                                                                held_lab)
    files[kind].parent.mkdir(parents=True, exist_ok=True)
    files[f"{kind}_random"].parent.mkdir(parents=True, exist_ok=True)
    from model.teachers import ClipTeacher, DinoTeacher  # imported already by Probe

    teacher, random_teacher = model.teacher, random_probe.teacher
    if kind == "dino":
        assert isinstance(teacher, DinoTeacher) and isinstance(random_teacher, DinoTeacher)
        save_dino(teacher.encoder, files[kind])
        save_dino(random_teacher.encoder, files[f"{kind}_random"])
    else:
        assert isinstance(teacher, ClipTeacher) and isinstance(random_teacher, ClipTeacher)
        save_clip(teacher.visual, files[kind])
        save_clip(random_teacher.visual, files[f"{kind}_random"])
    result["seconds"] = round(time.time() - start)
    write_text(work / "teachers_pretrained" / f"{kind}.json", json.dumps(result, indent=1))
    write_text(record, json.dumps(wanted) + "\n")
    print(f"teachers: {kind} done in {result['seconds']} s: {json.dumps(result)}", flush=True)


def student_file(work: Path) -> Path:
    return work / "student_pretrained" / "dinov2_tiny.pth"


def make_student(work: Path, steps: int = STUDENT_STEPS) -> None:
    """Pretrain the student stand-in as the DINO stand-in is pretrained, for fewer steps: weaker than the
    teachers, as DINOv2-S is weaker than DINOv2-B and CLIP-L. Saved in DINOv2's format, read by the trainer's
    model.pretrained path; its linear probe is scored like the teachers'."""
    record = work / "student_pretrained" / "student.recipe.json"
    wanted = {"pool_seed": POOL_SEED, "pool_scenes": POOL_SCENES, "steps": steps, "colour": "dataset.transforms"}
    if made_with(record, wanted) and student_file(work).is_file():
        print("student: exists, made with the same values: kept")
        return
    from model.teachers import DinoTeacher

    torch.set_num_threads(1)
    start = time.time()
    img, lab = pool_tiles(POOL_SEED, POOL_SCENES)
    n_held = len(img) // 10
    model = train_probe("dino", img[:-n_held], lab[:-n_held], steps, seed=3)
    result = {"steps": steps, "probe_held_out": probe_miou(model, img[-n_held:], lab[-n_held:]),
              "seconds": round(time.time() - start)}
    student_file(work).parent.mkdir(parents=True, exist_ok=True)
    assert isinstance(model.teacher, DinoTeacher)
    save_dino(model.teacher.encoder, student_file(work))
    write_text(work / "student_pretrained" / "student.json", json.dumps(result, indent=1))
    write_text(record, json.dumps(wanted) + "\n")
    print(f"student: done in {result['seconds']} s: {json.dumps(result)}", flush=True)


def check_teachers(work: Path) -> None:
    """Both folders load through build_teachers; merge the two records into teachers.json."""
    verify_teachers(work / "teachers_pretrained")
    verify_teachers(work / "teachers_random")
    merged = {kind: json.loads((work / "teachers_pretrained" / f"{kind}.json").read_text())
              for kind in ("dino", "clip")}
    write_text(work / "teachers_pretrained" / "teachers.json", json.dumps(merged, indent=1))
    for kind, r in merged.items():
        print(f"teachers: {kind} held-out linear probe mIoU {r['probe_held_out']['miou']} "
              f"(random init {r['random_init_probe_held_out']['miou']}), {r['seconds']} s")
    print(f"teachers: colour-only pixel MLP held-out mIoU {merged['clip']['colour_only_pixel_mlp_held_out']['miou']}")


def probe_random(model: Probe, img, lab, held_img, held_lab, steps: int, seed: int) -> dict:
    """Linear head on a frozen random encoder (what the random control teacher 'knows')."""
    opt = torch.optim.AdamW(model.head.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(img), (48,), generator=g)
        x, y = augment(img[idx], lab[idx], g)
        target, weight = soft_targets(y, model.grid)
        with torch.no_grad():
            f = model.features(normalize(x))
        logp = model.head(f).log_softmax(-1)
        loss = -((target * logp).sum(-1) * weight).sum() / weight.sum().clamp_min(1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return probe_miou(model, held_img, held_lab)


# ----------------------------------------------------------------------------------------------------------
# Runs (third design): the headroom and the methods in one queue, then third seeds where two means are close

# The rule fixed before any method run was scored (README.md, "Third design"): supervised on all tiles must score
# at least this many points of test mIoU above supervised on 1 % (mean over seeds), or every verdict is "cannot
# judge"; a claim "A beats B" is supported when A's mean is at least CLAIM_MARGIN above B's and A beats B in every
# seed, contradicted when B's mean is at least CLAIM_MARGIN above A's and B wins in every seed, and otherwise
# cannot be judged (no difference of a point either way).
HEADROOM_RULE = 8.0
CLAIM_MARGIN = 1.0
SEEDS = (0, 1)
THIRD_SEED = 2
# The claims, each "first beats second" at 1 % (32 labelled tiles), with the runs (method-variant names) compared.
CLAIMS = (
    ("semi-supervision beats supervised training", "fixmatch", "supervised"),
    ("RS-MTDF beats FixMatch", "rs_mtdf", "fixmatch"),
    ("real teachers beat random ones", "rs_mtdf", "rs_mtdf-random"),
    ("fusion adds to distillation", "rs_mtdf", "rs_mtdf-nofusion"),
    ("two teachers beat DINO alone", "rs_mtdf", "rs_mtdf-dino"),
    ("two teachers beat CLIP alone", "rs_mtdf", "rs_mtdf-clip"),
)


def variants(work: Path) -> dict[str, tuple[str, list[str]]]:
    """{run name stem: (train.method, overrides)} of every method and control; every student starts from the
    pretrained stand-in (model.pretrained, added by `job`)."""
    real, rand = work / "teachers_pretrained", work / "teachers_random"
    teach = [f"teachers.dino.weights={real / 'dinov2_tiny.pth'}", f"teachers.clip.weights={real / 'clip_tiny.pt'}"]
    teach_rand = [f"teachers.dino.weights={rand / 'dinov2_tiny.pth'}", f"teachers.clip.weights={rand / 'clip_tiny.pt'}"]
    return {"supervised": ("supervised", []), "fixmatch": ("fixmatch", []), "unimatch_v2": ("unimatch_v2", []),
            "rs_mtdf": ("rs_mtdf", teach), "rs_mtdf-random": ("rs_mtdf", teach_rand),
            "rs_mtdf-nofusion": ("rs_mtdf", [*teach, NO_FUSION]),
            "rs_mtdf-dino": ("rs_mtdf", [*teach, "teachers.clip.enabled=false",
                                         "distill.fusion_weights={student: 0.8, dino: 0.2, clip: 0}"]),
            "rs_mtdf-clip": ("rs_mtdf", [*teach, "teachers.dino.enabled=false",
                                         "distill.fusion_weights={student: 0.8, dino: 0, clip: 0.2}"])}


def job(work: Path, stem: str, split: str, seed: int) -> tuple[str, list[str]]:
    """(run name, overrides) of variant `stem` at `split` % labelled with `seed`."""
    method, over = variants(work)[stem]
    return (f"{stem}_{split}_s{seed}", [f"train.method={method}", f"dataset.split={split}", f"train.seed={seed}",
                                        f"model.pretrained={student_file(work)}", *over])


def headroom_jobs(work: Path, seeds: tuple[int, ...]) -> list[tuple[str, list[str]]]:
    """Supervised on 1 % and on all tiles: the check's range, measured before any method is compared."""
    return [job(work, "supervised", split, seed) for seed in seeds for split in ("1", "100")]


def method_jobs(work: Path, quick: bool) -> list[tuple[str, list[str]]]:
    """The comparison: at 1 % every method and control, seeds 0 and 1 (seed 0 of FixMatch, RS-MTDF and random
    teachers only with --quick); the 5 % row, seed 0; the ablations at 1 %, seeds 0 and 1."""
    if quick:
        return [job(work, stem, "1", 0) for stem in ("fixmatch", "rs_mtdf", "rs_mtdf-random")]
    at_one = ("fixmatch", "unimatch_v2", "rs_mtdf", "rs_mtdf-random")
    plan = [job(work, stem, "1", seed) for seed in SEEDS for stem in at_one]
    plan += [job(work, stem, "5", 0) for stem in ("supervised", "fixmatch", "unimatch_v2", "rs_mtdf")]
    plan += [job(work, stem, "1", seed) for seed in SEEDS for stem in ("rs_mtdf-nofusion", "rs_mtdf-dino",
                                                                          "rs_mtdf-clip")]
    return plan


def third_seed_jobs(work: Path, scores: dict[str, dict[int, float]]) -> list[tuple[str, list[str]]]:
    """Seed 2 of both sides of every claim whose two means (seeds 0 and 1) are within CLAIM_MARGIN."""
    stems: list[str] = []
    for _, first, second in CLAIMS:
        a, b = (scores.get(f"{stem}_1", {}) for stem in (first, second))
        if all(seed in a and seed in b for seed in SEEDS) and \
                abs(np.mean([a[s] for s in SEEDS]) - np.mean([b[s] for s in SEEDS])) < CLAIM_MARGIN:
            stems += [stem for stem in (first, second) if stem not in stems]
    return [job(work, stem, "1", THIRD_SEED) for stem in stems]


# The supervised runs that chose the settings (README.md, "Third design"): (epochs of 100 steps, encoder lr,
# lr_multi) at 1 % and 100 %, seed 0, scored on val; then the EMA horizons at 1 % with the chosen rates.
TUNE_RATES = ((9, 1e-4, 10.0), (9, 2e-4, 5.0), (9, 3e-4, 3.3333333), (9, 4e-4, 2.5), (9, 3e-4, 5.0),
              (9, 2e-4, 10.0), (9, 3e-4, 6.6666667), (9, 3e-4, 10.0), (12, 2e-4, 5.0), (12, 2e-4, 10.0),
              (15, 2e-4, 5.0), (15, 2e-4, 10.0), (15, 3e-4, 6.6666667))
TUNE_EMA = ((15, 0.867), (15, 0.976), (15, 0.99), (9, 0.867), (9, 0.9), (9, 0.96), (9, 0.99), (9, 0.996))


def tune_jobs(work: Path) -> list[tuple[str, list[str]]]:
    """Supervised runs only, scored on val: the learning rates and the length, then the EMA horizon."""
    plan = []
    for epochs, lr, multi in TUNE_RATES:
        for split in ("1", "100"):
            name = f"tune/sup_{split}_e{epochs}_lr{lr:g}_x{multi:.3g}"
            plan.append((name, [*job(work, "supervised", split, 0)[1], f"train.epochs={epochs}", f"train.lr={lr}",
                                f"train.lr_multi={multi}", "train.eval_interval=1"]))
    lr, multi = TUNE_RATES[-1][1:]
    for epochs, cap in TUNE_EMA:
        rate = (lr, multi) if epochs == 15 else (3e-4, 6.6666667)
        plan.append((f"tune/ema_e{epochs}_cap{cap:g}", [*job(work, "supervised", "1", 0)[1], f"train.epochs={epochs}",
                                                        f"train.lr={rate[0]}", f"train.lr_multi={rate[1]}",
                                                        f"train.ema_cap={cap}", "train.eval_interval=1"]))
    return plan


def tune_table(work: Path) -> str:
    """The val mIoU of the tuning runs: supervised 1 % and 100 % and their difference; the EMA's mean over a run."""
    def best(name: str) -> float | None:
        progress = read_progress(work / "runs" / name)
        return None if progress is None or not progress.get("finished") else progress["best"]["student"]["miou"]

    lines = ["| steps | encoder lr | lr_multi | val 1 % | val 100 % | difference |", "|---:|---:|---:|---:|---:|---:|"]
    for epochs, lr, multi in TUNE_RATES:
        low, high = (best(f"tune/sup_{split}_e{epochs}_lr{lr:g}_x{multi:.3g}") for split in ("1", "100"))
        if low is not None and high is not None:
            lines.append(f"| {epochs * 100} | {lr:g} | {multi:.3g} | {low:.2f} | {high:.2f} | {high - low:.2f} |")
    lines += ["", "| steps | ema_cap | EMA val mIoU, mean over the run's evaluations | EMA minus student |",
              "|---:|---:|---:|---:|"]
    for epochs, cap in TUNE_EMA:
        progress = read_progress(work / "runs" / f"tune/ema_e{epochs}_cap{cap:g}")
        if progress and progress.get("finished"):
            history = progress["history"]
            ema = float(np.mean([e["ema"] for e in history]))
            gap = float(np.mean([e["ema"] - e["student"] for e in history]))
            lines.append(f"| {epochs * 100} | {cap:g} | {ema:.2f} | {gap:+.2f} |")
    return "\n".join(lines)


def run_one(work: Path, name: str, overrides: list[str], threads: int, score: bool = True) -> subprocess.Popen | None:
    """Start training and scoring one run (without `score`: training only, the tuning runs), unless it is done
    already; a run folder of other settings is refused in one line."""
    run_dir = work / "runs" / name
    # The data of this work folder, whatever config.yaml names (its default is exp/learning_check).
    overrides = [f"dataset.root={work / 'loveda'}", f"dataset.lists={work / 'splits'}", *overrides,
                 f"save_path={run_dir}"]
    cfg = load_config(CONFIG, overrides)
    diffs = saved_setting_differences(run_dir, cfg, training_list_digests(cfg.dataset.lists, cfg.dataset.split))
    if diffs:
        raise ConfigError(f"{run_dir} holds a run with other settings ({describe_differences(diffs)}); use another "
                          f"--work, or remove the run")
    done = (protocol_evaluation(run_dir, split_file(cfg.dataset.lists, "test")) is not None if score
            else bool((read_progress(run_dir) or {}).get("finished")))
    if done:
        return None
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "PYTHONWARNINGS": "ignore"}
    run_dir.mkdir(parents=True, exist_ok=True)
    train = [sys.executable, "train.py", "--config", str(CONFIG), *overrides]
    # PyTorch, as its published figures were scored: an ONNX Runtime export per run would cost more than scoring
    # its 400 small tiles.
    test = [sys.executable, "eval/eval.py", "--config", str(run_dir / "config.yaml"), "--checkpoint",
            str(run_dir / "best.pth"), "--subset", "test", "--backend", "torch", "--out", str(run_dir / "eval_test")]
    # Every path quoted: a WORK folder may hold spaces.
    cmd = f"{shlex.join(train)} && {shlex.join(test)}" if score else shlex.join(train)
    log = open(run_dir / "run.log", "a")
    print(f"start {name}", flush=True)
    return subprocess.Popen(["sh", "-c", cmd], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def run_all(work: Path, todo: list[tuple[str, list[str]]], parallel: int, score: bool = True) -> list[str]:
    """Run `todo` `parallel` at a time (threads split between them); the names of those that failed."""
    threads = max(1, (os.cpu_count() or 2) // parallel)
    running: list[tuple[str, subprocess.Popen, float]] = []
    failed = []
    todo = list(todo)
    start = time.time()
    while todo or running:
        while todo and len(running) < parallel:
            name, over = todo.pop(0)
            proc = run_one(work, name, over, threads, score)
            if proc is not None:
                running.append((name, proc, time.time()))
        time.sleep(0.5)
        for item in list(running):
            name, proc, t0 = item
            if proc.poll() is not None:
                running.remove(item)
                status = "ok" if proc.returncode == 0 else f"FAILED ({proc.returncode})"
                if proc.returncode:
                    failed.append(name)
                print(f"done {name}: {status} in {time.time() - t0:.0f} s (total {time.time() - start:.0f} s)",
                      flush=True)
    return failed


# A run's cost relative to a supervised run of the same steps (times on an idle 2-core machine, one thread a run):
# started longest first beside the short headroom runs, the runs keep both cores busy to the end.
RELATIVE_COST = {"supervised": 1.0, "fixmatch": 1.7, "unimatch_v2": 2.0, "rs_mtdf": 2.0}


def queue(headroom: list[tuple[str, list[str]]], compared: list[tuple[str, list[str]]]) -> list[tuple[str, list[str]]]:
    """The order runs start in: each headroom run (first in the queue) beside a method run, longest first."""
    def cost(item: tuple[str, list[str]]) -> float:
        return RELATIVE_COST[next(o.split("=", 1)[1] for o in item[1] if o.startswith("train.method="))]

    longest = sorted(compared, key=cost, reverse=True)  # stable: the plan's order among runs of one cost
    paired = [run for pair in zip(headroom, longest) for run in pair]
    return paired + headroom[len(paired) // 2:] + longest[len(paired) // 2:]


def make_runs(work: Path, quick: bool, parallel: int) -> None:
    """The headroom runs and the methods in one queue (the headroom's first), then, in the full plan, the third
    seeds the rule asks for; the headroom is stated once all are scored (the verdicts depend on it)."""
    missing = [path for path in (work / "loveda", work / "splits", student_file(work),
                                 *(work / kind / name for kind in ("teachers_pretrained", "teachers_random")
                                   for name in ("dinov2_tiny.pth", "clip_tiny.pt"))) if not path.exists()]
    if missing:
        raise DataError(f"{missing[0]} is missing: make the data and the teachers first (`check.py data`, "
                        f"`check.py teachers`; run.sh does both)")
    start = time.time()
    seeds = (0,) if quick else SEEDS
    failed = run_all(work, queue(headroom_jobs(work, seeds), method_jobs(work, quick)), parallel)
    print(headroom_line(test_scores(work)), flush=True)
    if not quick:
        failed += run_all(work, third_seed_jobs(work, test_scores(work)), parallel)
    print(f"runs: {time.time() - start:.0f} s; failed: {failed or 'none'}")
    if failed:
        raise DataError(f"{len(failed)} run(s) failed: {', '.join(failed)} (see runs/<name>/run.log)")


# ----------------------------------------------------------------------------------------------------------
# Diagnosis: how good are the pseudo-labels the EMA model would give?


def pseudo_label_quality(work: Path, runs: list[str], thresh: float = 0.95) -> dict:
    """For each run: the final EMA (the pseudo-labeller) and student of latest.pth on the tiles that are unlabelled at
    1 % (the same 3,168 tiles for every run, un-augmented), against their (hidden) ground truth: share of pixels
    above the threshold, accuracy of those pixels, accuracy of all pixels. What FixMatch's L_u trains on, measured."""
    from model.convert import load_segmenter_weights
    from model.segmenter import build_segmenter

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    root, lists = work / "loveda", work / "splits"
    pairs = [line.split() for line in split_file(lists, "unlabeled", "1").read_text().split("\n") if line.strip()]
    imgs = torch.from_numpy(np.stack([rgb_array(root / a) for a, _ in pairs]))
    masks = torch.from_numpy(np.stack([open_labels(root / b) for _, b in pairs])).long()
    x_all = normalize(imgs.permute(0, 3, 1, 2))
    out = {}
    for name in runs:
        run_dir = work / "runs" / name
        if not (run_dir / "latest.pth").is_file():
            continue
        cfg = load_config(run_dir / "config.yaml")
        res = {}
        for ckpt in ("latest.pth",):
            for which in ("ema", "student"):
                model = build_segmenter(cfg)
                load_segmenter_weights(model, run_dir / ckpt, which)
                model.eval()
                with torch.no_grad():
                    probs = torch.cat([model(x_all[i:i + 50]).softmax(1) for i in range(0, len(x_all), 50)])
                conf, pred = probs.max(1)
                valid = masks != 255
                sure = (conf >= thresh) & valid
                res[f"{ckpt[:-4]}_{which}"] = {
                    "confident_share": round(100 * float(sure.sum() / valid.sum()), 1),
                    "confident_accuracy": (round(100 * float((pred == masks)[sure].float().mean()), 1)
                                           if sure.any() else None),
                    "all_accuracy": round(100 * float((pred == masks)[valid].float().mean()), 1)}
        out[name] = res
        print(f"pseudo-labels {name}: {res}", flush=True)
    write_text(work / "pseudo_labels.json", json.dumps(out, indent=1))
    return out


def student_probes(work: Path, runs: list[str], steps: int = 400) -> dict:
    """What the students' encoders know: a linear per-token probe on each run's best student's last tokens
    (the encoder output that feeds the DPT head and the translators), frozen, trained on the teachers' pool
    and scored on the same held-out pool scenes as the teachers' probes."""
    from model.convert import load_segmenter_weights
    from model.segmenter import build_segmenter

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    img, lab = pool_tiles(POOL_SEED, POOL_SCENES)
    n_held = len(img) // 10
    train_img, train_lab, held_img, held_lab = img[:-n_held], lab[:-n_held], img[-n_held:], lab[-n_held:]
    out = {}
    for name in ["random_init", "stand_in", *runs]:
        run_dir = work / "runs" / name
        if name == "random_init":  # an untrained student: the baseline every probe is compared with
            torch.manual_seed(0)
            seg = build_segmenter(load_config(CONFIG, ["train.method=supervised"]))
        elif name == "stand_in":  # the pretrained student every run starts from, before any fine-tuning
            torch.manual_seed(0)
            seg = build_segmenter(load_config(CONFIG, ["train.method=supervised",
                                                       f"model.pretrained={student_file(work)}"]))
        elif not (run_dir / "best.pth").is_file():
            continue
        else:
            seg = build_segmenter(load_config(run_dir / "config.yaml"))
            load_segmenter_weights(seg, run_dir / "best.pth", "student")
        probe = Probe("dino")  # only its head and grid are used; the features come from the student
        probe.teacher.encoder = seg.encoder
        probe.features = seg.encoder.last_tokens  # type: ignore[method-assign]
        for p in seg.parameters():
            p.requires_grad_(False)
        seg.eval()
        out[name] = probe_random(probe, train_img, train_lab, held_img, held_lab, steps, 0)
        print(f"student probe {name}: {out[name]}", flush=True)
    write_text(work / "student_probes.json", json.dumps(out, indent=1))
    return out


# ----------------------------------------------------------------------------------------------------------
# Summary


def test_scores(work: Path) -> dict[str, dict[int, float]]:
    """{'<variant>_<split>': {seed: test mIoU}} of every run whose current best.pth has its test score."""
    scores: dict[str, dict[int, float]] = {}
    runs = work / "runs"
    for run_dir in sorted(p for p in (runs.iterdir() if runs.is_dir() else []) if (p / "config.yaml").is_file()):
        scored = protocol_evaluation(run_dir, split_file(work / "splits", "test"))
        if scored is None:
            continue
        key, seed = run_dir.name.rsplit("_s", 1)
        scores.setdefault(key, {})[int(seed)] = json.loads((scored / "metrics.json").read_text())["miou"]
    return scores


def mean(values: dict[int, float]) -> float:
    return float(np.mean(list(values.values())))


def headroom(scores: dict[str, dict[int, float]]) -> float | None:
    """Supervised on all tiles minus supervised on 1 %, test mIoU, each the mean over its seeds."""
    low, high = scores.get("supervised_1"), scores.get("supervised_100")
    return mean(high) - mean(low) if low and high else None


def headroom_line(scores: dict[str, dict[int, float]]) -> str:
    room = headroom(scores)
    if room is None:
        return "headroom: not measured (supervised at 1 % and at 100 % have no test score yet)"
    verdict = "the check can judge" if room >= HEADROOM_RULE else "below the rule: every verdict is cannot judge"
    return (f"headroom: {room:.1f} points of test mIoU (supervised on all tiles {mean(scores['supervised_100']):.1f}, "
            f"on 1 % {mean(scores['supervised_1']):.1f}); the rule asks for {HEADROOM_RULE:.0f}: {verdict}")


def verdict(scores: dict[str, dict[int, float]], first: str, second: str) -> tuple[str, str]:
    """The rule's verdict on "first beats second" at 1 %, and the figures it rests on."""
    a, b = scores.get(f"{first}_1", {}), scores.get(f"{second}_1", {})
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return "not run", ""
    diffs = [a[s] - b[s] for s in seeds]
    # Both means over the seeds both sides ran: the difference of the means is then the mean difference.
    figures = (f"{np.mean([a[s] for s in seeds]):.2f} vs {np.mean([b[s] for s in seeds]):.2f}: "
               f"{np.mean(diffs):+.2f} (per seed {', '.join(f'{d:+.2f}' for d in diffs)})")
    room = headroom(scores)
    if room is None or room < HEADROOM_RULE:
        return "cannot judge (headroom below the rule)", figures
    if np.mean(diffs) >= CLAIM_MARGIN and all(d > 0 for d in diffs):
        return "supported", figures
    if np.mean(diffs) <= -CLAIM_MARGIN and all(d < 0 for d in diffs):
        return "contradicted", figures
    return "cannot judge (no difference of a point)", figures


def summary(work: Path) -> str:
    """The headroom, test mIoU per run (mean +- sd over seeds, per seed), the verdicts and, where `diagnose` ran,
    each run's pseudo-labels and probe, printed, then written (summary.md, summary.json) atomically."""
    scores = test_scores(work)
    seeds = sorted({seed for values in scores.values() for seed in values})
    lines = [headroom_line(scores), "", f"| run (test mIoU %) | {' | '.join(f'seed {s}' for s in seeds)} | mean ± sd |",
             f"|---|{'---:|' * len(seeds)}---:|"]
    for key in in_plot_order(scores):
        values = scores[key]
        sd = f" ± {np.std(list(values.values()), ddof=1):.2f}" if len(values) > 1 else ""
        cells = [f"{values[s]:.2f}" if s in values else "" for s in seeds]
        lines.append(f"| {key} | {' | '.join(cells)} | {mean(values):.2f}{sd} |")
    lines += ["", "| claim (1 %) | verdict | figures: test mIoU, mean over seeds, difference |", "|---|---|---|"]
    verdicts = {}
    for claim, first, second in CLAIMS:
        outcome, figures = verdict(scores, first, second)
        verdicts[claim] = {"verdict": outcome, "figures": figures, "first": first, "second": second}
        lines.append(f"| {claim} | {outcome} | {figures} |")
    lines += diagnosis_lines(work, scores)
    text = "\n".join(lines)
    print(text, flush=True)
    write_text(work / "summary.md", text + "\n")
    write_text(work / "summary.json", json.dumps({"headroom": headroom(scores), "rule": HEADROOM_RULE,
                                                  "scores": scores, "verdicts": verdicts}, indent=1) + "\n")
    if scores:
        plot(scores, work / "summary.png")
    return text


def diagnosis_lines(work: Path, scores: dict[str, dict[int, float]]) -> list[str]:
    """Where `diagnose` ran: each run's test mIoU beside its pseudo-labels (the final EMA on the tiles unlabelled at
    1 %: share of pixels above the threshold, accuracy of those) and the linear probe of its student's encoder."""
    labels, probes = (work / "pseudo_labels.json", work / "student_probes.json")
    if not (labels.is_file() and probes.is_file()):
        return []
    labels_of, probe_of = json.loads(labels.read_text()), json.loads(probes.read_text())
    lines = ["", "| run | test mIoU | confident share (EMA, %) | accuracy of the confident pixels (%) | "
             "student probe mIoU |", "|---|---:|---:|---:|---:|"]
    for name in ("random_init", "stand_in"):
        if name in probe_of:
            lines.append(f"| {name.replace('_', ' ')} (no training) | | | | {probe_of[name]['miou']:.2f} |")
    for key in in_plot_order(scores):
        for seed, miou in sorted(scores[key].items()):
            name = f"{key}_s{seed}"
            ema = labels_of.get(name, {}).get("latest_ema", {})
            share, right = ema.get("confident_share"), ema.get("confident_accuracy")
            probe = probe_of.get(name, {}).get("miou")
            lines.append(f"| {name} | {miou:.2f} | {'' if share is None else f'{share:.1f}'} | "
                         f"{'' if right is None else f'{right:.1f}'} | {'' if probe is None else f'{probe:.2f}'} |")
    return lines


# The bars of the plot, left to right: the headroom's two ends around the methods and controls at 1 %.
PLOT_ORDER = ("supervised_1", "fixmatch_1", "unimatch_v2_1", "rs_mtdf_1", "rs_mtdf-random_1", "rs_mtdf-nofusion_1",
              "rs_mtdf-dino_1", "rs_mtdf-clip_1", "supervised_5", "fixmatch_5", "unimatch_v2_5", "rs_mtdf_5",
              "supervised_100")


def in_plot_order(scores: dict[str, dict[int, float]]) -> list[str]:
    """The variants of `scores` in PLOT_ORDER, then any other in name order."""
    return sorted(scores, key=lambda key: (PLOT_ORDER.index(key) if key in PLOT_ORDER else len(PLOT_ORDER), key))


def plot(scores: dict[str, dict[int, float]], path: Path) -> None:
    """Test mIoU of every variant: a bar at the mean over seeds, a dot per seed, the headroom rule's two ends."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers
    import matplotlib.pyplot as plt

    keys = [key for key in PLOT_ORDER if key in scores]
    fig, ax = plt.subplots(figsize=(11, 4.2))
    colours = ["0.55" if key.startswith("supervised") else "tab:blue" if "-" not in key else "tab:orange"
               for key in keys]
    ax.bar(range(len(keys)), [mean(scores[key]) for key in keys], color=colours, alpha=0.6)
    for x, key in enumerate(keys):
        ax.plot([x] * len(scores[key]), list(scores[key].values()), "k.", ms=6)
    low, high = scores.get("supervised_1"), scores.get("supervised_100")
    if low and high:
        for level, text in ((mean(low), "supervised 1 %"), (mean(high), "supervised 100 %")):
            ax.axhline(level, color="0.3", lw=0.8, ls="--")
            ax.text(len(keys) - 0.4, level, f" {text}", va="center", fontsize=8)
    labels = [f"{name.replace('_', ' ')} {split} %" for name, split in (key.rsplit("_", 1) for key in keys)]
    ax.set_xticks(range(len(keys)), labels, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("test mIoU (%)")
    room = headroom(scores)
    ax.set_title("Learning check, third design: test mIoU, mean over seeds (dots: seeds)"
                 + (f"; headroom {room:.1f} points" if room is not None else ""), fontsize=10)
    ax.set_ylim(min(min(v.values()) for v in scores.values()) - 3, max(max(v.values()) for v in scores.values()) + 2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def positive(text: str) -> int:
    """argparse type: a whole number of at least 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, not {text!r}")
    return int(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("step", choices=("data", "teachers", "tune", "runs", "summary", "diagnose"),
                        help="tune: the supervised runs that chose the settings (val); diagnose: the confident "
                             "share of the EMA's pseudo-labels and a linear probe of every run's student")
    parser.add_argument("--work", type=path_arg, default=ROOT / "exp" / "learning_check")
    parser.add_argument("--quick", action="store_true", help="runs: supervised at 1 %% and 100 %%, FixMatch, "
                        "RS-MTDF and random teachers at 1 %%, seed 0")
    parser.add_argument("--parallel", type=positive, default=2, help="runs at once (threads split between them)")
    parser.add_argument("--teacher-steps", type=positive, default=1500)
    parser.add_argument("--kind", choices=("dino", "clip", "student"),
                        help="teachers: pretrain only this one, or the student stand-in (else: check the teachers)")
    args = parser.parse_args(argv)
    work = check_output_folder(args.work.resolve(), "--work")
    if args.step == "data":
        make_data(work)
    elif args.step == "teachers":
        if args.kind == "student":
            make_student(work)
        elif args.kind:
            make_teacher(work, args.kind, args.teacher_steps)
        else:
            check_teachers(work)
    elif args.step == "tune":
        failed = run_all(work, tune_jobs(work), args.parallel, score=False)
        print(tune_table(work))
        if failed:
            raise DataError(f"{len(failed)} tuning run(s) failed: {', '.join(failed)}")
    elif args.step == "runs":
        make_runs(work, args.quick, args.parallel)
    elif args.step == "diagnose":
        names = sorted(p.name for p in runs_made(work).iterdir() if (p / "best.pth").is_file())
        pseudo_label_quality(work, names)
        student_probes(work, names)
    else:
        runs_made(work)
        summary(work)
    return 0


def runs_made(work: Path) -> Path:
    """`work`'s runs folder; a work folder without one (nothing trained there yet, or another folder) is refused."""
    if not (work / "runs").is_dir():
        raise DataError(f"{work} holds no runs folder: nothing to read; train the runs first "
                        f"(WORK={shlex.quote(str(work))} sh experiments/learning_check/run.sh)")
    return work / "runs"


if __name__ == "__main__":
    run_main(main)
