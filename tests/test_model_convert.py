"""Segmenter checkpoints: ours and the authors' RS-MTDF release load exactly; mismatches say what differs."""

import numpy as np
import pytest
import torch
from test_model_teachers import tiny_cfg

from model.check import report
from model.convert import convert_authors_state_dict, load_segmenter_weights
from model.segmenter import Segmenter, build_segmenter
from util.errors import WeightsError

pytestmark = pytest.mark.usefixtures("one_thread")


def authors_name(key: str) -> str:
    """Our parameter name -> the authors' (their DPT in UniMatch V2 / Depth-Anything naming)."""
    parts = key.split(".")
    if parts[0] == "encoder":
        return "backbone." + ".".join(parts[1:])
    if parts[0] == "translators":
        return f"feature_translator_for_{parts[1]}.layer." + ".".join(parts[2:])
    if parts[0] == "projections":
        return f"project_{parts[1]}." + ".".join(parts[2:])
    rest = ".".join(parts[3:])
    if parts[1] == "resize":
        return f"head.resize_layers.{parts[2]}.{rest}"
    if parts[1] == "layer_rn":
        return f"head.scratch.layer{int(parts[2]) + 1}_rn.{rest}"
    if parts[1] == "fusion":
        level, unit = int(parts[2]) + 1, parts[3]
        unit = {"rcu1": "resConfUnit1", "rcu2": "resConfUnit2"}.get(unit, unit)
        return f"head.scratch.refinenet{level}.{unit}." + ".".join(parts[4:])
    if parts[1] == "output":
        return f"head.scratch.output_conv.{parts[2]}.{rest}"
    return key  # head.projects.* is named alike


def authors_checkpoint(student: dict, ema: dict) -> dict:
    """A latest.pth of the authors' release: DDP prefixes, teachers inside, unused keys, numpy bests."""
    def layout(state):
        out = {"module." + authors_name(k): v.clone() for k, v in state.items()}
        out["module.backbone.mask_token"] = torch.randn(1, 64)
        for conv in ("conv1", "conv2"):  # built but never used by the reference forward
            out[f"module.head.scratch.refinenet4.resConfUnit1.{conv}.weight"] = torch.randn(32, 32, 3, 3)
            out[f"module.head.scratch.refinenet4.resConfUnit1.{conv}.bias"] = torch.randn(32)
        out["module.Dino_teacher_model.blocks.0.norm1.weight"] = torch.randn(768)
        out["module.clip_model.visual.conv1.weight"] = torch.randn(1024, 3, 14, 14)
        return out

    return {"model": layout(student), "model_ema": layout(ema), "optimizer": {"state": {}, "param_groups": []},
            "epoch": 3, "previous_best": np.float64(41.2), "previous_best_ema": np.float64(42.0),
            "best_epoch": 2, "best_epoch_ema": 3}


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    model = build_segmenter(tiny_cfg()).eval()
    ema = {k: v + 0.01 for k, v in model.state_dict().items()}
    return model, ema


def fresh() -> Segmenter:
    torch.manual_seed(123)
    return build_segmenter(tiny_cfg()).eval()


def test_authors_checkpoint_uses_every_key_and_gives_identical_logits(tmp_path, trained):
    model, ema = trained
    ckpt = authors_checkpoint(model.state_dict(), ema)
    converted = convert_authors_state_dict(ckpt["model"])
    assert set(converted) == set(model.state_dict())
    path = tmp_path / "latest.pth"
    torch.save(ckpt, path)
    img = torch.randn(2, 3, 42, 56)
    loaded = fresh()
    load_segmenter_weights(loaded, path, "student")
    with torch.no_grad():
        assert torch.equal(loaded(img), model(img))
    load_segmenter_weights(loaded, path, "ema")
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, ema[key]), key


def test_our_checkpoint_loads_student_and_ema(tmp_path, trained):
    model, ema = trained
    path = tmp_path / "best.pth"
    torch.save({"model": model.state_dict(), "model_ema": ema, "config": tiny_cfg().to_dict()}, path)
    loaded = fresh()
    load_segmenter_weights(loaded, path)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.state_dict().items())
    load_segmenter_weights(loaded, path, "ema")
    assert all(torch.equal(v, ema[k]) for k, v in loaded.state_dict().items())


def test_without_a_choice_the_weights_the_checkpoint_was_selected_by_are_loaded(tmp_path, trained):
    model, ema = trained
    for selected_by, expected in (("ema", ema), ("student", model.state_dict()), (None, model.state_dict())):
        path = tmp_path / f"best_{selected_by}.pth"
        ckpt = {"model": model.state_dict(), "model_ema": ema, "config": tiny_cfg().to_dict()}
        if selected_by:
            ckpt["selected_by"] = selected_by
        torch.save(ckpt, path)
        loaded = fresh()
        assert load_segmenter_weights(loaded, path).which == (selected_by or "student")
        assert all(torch.equal(v, expected[k]) for k, v in loaded.state_dict().items())


def test_unknown_authors_key_is_an_error(trained):
    state = authors_checkpoint(trained[0].state_dict(), trained[1])["model"]
    state["module.head.scratch.stem_transpose.weight"] = torch.zeros(1)
    with pytest.raises(WeightsError, match="does not know: head.scratch.stem_transpose.weight"):
        convert_authors_state_dict(state)


def test_other_class_count_is_named(tmp_path, trained):
    path = tmp_path / "potsdam.pth"
    torch.save({"model": trained[0].state_dict()}, path)
    cfg = tiny_cfg(dataset={"name": "potsdam"})  # 6 classes
    with pytest.raises(WeightsError, match=r"potsdam\.pth was trained for 7 classes, config says 6"):
        load_segmenter_weights(build_segmenter(cfg), path)


def test_other_backbone_is_named(tmp_path, trained):
    path = tmp_path / "tiny.pth"
    torch.save({"model": trained[0].state_dict()}, path)
    small = build_segmenter(tiny_cfg(model={"backbone": "small", "pretrained": None}, train={"method": "fixmatch"}))
    with pytest.raises(WeightsError, match="holds a tiny backbone, config says small"):
        load_segmenter_weights(small, path)


def test_other_teachers_are_named(tmp_path, trained):
    path = tmp_path / "rs_mtdf.pth"
    torch.save({"model": trained[0].state_dict()}, path)
    with pytest.raises(WeightsError, match=r"translators for \['clip', 'dino'\], the config distils none"):
        load_segmenter_weights(build_segmenter(tiny_cfg(train={"method": "fixmatch"})), path)


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "pickled.pth"
    torch.save({"model": torch.nn.Linear(2, 2)}, path)
    with pytest.raises(WeightsError, match=r"cannot be read safely \(weights_only=True\).*torch\.nn\.modules\.linear"):
        load_segmenter_weights(fresh(), path)


def test_missing_entry_and_missing_file(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"weights": {}}, path)
    with pytest.raises(WeightsError, match="no 'model_ema' weights"):
        load_segmenter_weights(fresh(), path, "ema")
    with pytest.raises(WeightsError, match="checkpoint: weight file .*nothing.pth not found"):
        load_segmenter_weights(fresh(), tmp_path / "nothing.pth")


def test_check_reports_every_part():
    rows = dict(report(tiny_cfg()))
    assert len(rows) == 5
    assert rows["DPT head"] > 0 and any(k.startswith("teacher clip (tiny") for k in rows)
