"""The configuration schema: defaults, overrides, and one clear error per kind of mistake."""

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from util.config import Config, load_config, parse_override, save_config
from util.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted((REPO / "configs").glob("*.yaml"))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def error_of(path: Path, overrides: list[str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_defaults_are_the_reference_values_of_spec_section_5():
    cfg = Config()
    t = cfg.train
    assert (t.lr, t.lr_multi, t.weight_decay, t.betas) == (5e-6, 40.0, 0.01, (0.9, 0.999))
    assert (t.epochs, t.batch_size, t.poly_power, t.conf_thresh, t.ema_cap) == (60, 8, 0.9, 0.95, 0.996)
    assert (t.loss_weights.x, t.loss_weights.u, t.loss_weights.dis) == (1.0, 1.0, 1.0)
    assert cfg.dataset.crop_size == 518
    assert cfg.distill.weights == {"dino": 0.5, "clip": 0.5}
    assert cfg.distill.fusion_weights == {"student": 0.8, "dino": 0.1, "clip": 0.1}
    assert cfg.distill.translator_hidden == 1024
    assert cfg.teachers.clip.input_size == 224 and not cfg.teachers.clip.renormalize
    a = cfg.augment
    assert a.scale_range == (0.5, 2.0) and a.color_jitter == (0.5, 0.5, 0.5, 0.25)
    assert (a.color_jitter_p, a.grayscale_p, a.blur_p, a.cutmix_p) == (0.8, 0.2, 0.5, 0.5)
    assert a.cutmix_area == (0.02, 0.4) and a.cutmix_aspect == pytest.approx((0.3, 1 / 0.3))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    load_config(path)


@pytest.mark.parametrize("name", ["loveda", "potsdam", "deepglobe"])
def test_dataset_configs_state_every_default_they_rely_on(name):
    raw = yaml.safe_load((REPO / "configs" / f"{name}.yaml").read_text())
    cfg = load_config(REPO / "configs" / f"{name}.yaml")
    assert cfg.to_dict() == Config.model_validate(raw).to_dict()
    for section in ("dataset", "model", "teachers", "distill", "train", "augment", "eval"):
        assert set(raw[section]) == set(type(getattr(Config(), section)).model_fields), section


def test_protocol_exclusions_follow_the_dataset():
    assert load_config(REPO / "configs/loveda.yaml").dataset.excluded_classes == ()
    assert load_config(REPO / "configs/potsdam.yaml").dataset.excluded_classes == (5,)
    assert load_config(REPO / "configs/deepglobe.yaml").dataset.excluded_classes == (6,)


def test_a_missing_section_takes_the_defaults(tmp_path):
    cfg = load_config(write(tmp_path, "train:\n  epochs: 3\n"))
    assert cfg.train.epochs == 3 and cfg.train.lr == 5e-6 and cfg.dataset.crop_size == 518


def test_yaml_exponent_without_dot_is_read_as_a_number(tmp_path):
    # PyYAML reads `5e-6` as a string; users write it that way, so it must still be a float.
    assert load_config(write(tmp_path, "train:\n  lr: 5e-6\n")).train.lr == 5e-6


def test_overrides_apply_on_top_of_the_file_with_yaml_typed_values(tmp_path):
    path = write(tmp_path, "train:\n  epochs: 3\n")
    cfg = load_config(path, ["train.epochs=7", "train.lr=1e-4", "eval.mode=sliding_window",
                             "model.pretrained=null", "augment.scale_range=[0.75, 1.5]"])
    assert cfg.train.epochs == 7 and cfg.train.lr == 1e-4 and cfg.eval.mode == "sliding_window"
    assert cfg.model.pretrained is None and cfg.augment.scale_range == (0.75, 1.5)


def test_parse_override_splits_the_dotted_key():
    assert parse_override("train.loss_weights.u=2") == (["train", "loss_weights", "u"], 2)


def test_malformed_override_is_an_error():
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_override("train.lr")


def test_unknown_key_in_file_names_key_file_and_closest_valid_key(tmp_path):
    path = write(tmp_path, "train:\n  conf_tresh: 0.9\n")
    message = error_of(path)
    assert str(path) in message and "'train.conf_tresh'" in message and "'train.conf_thresh'" in message


def test_unknown_override_names_the_override_and_closest_valid_key(tmp_path):
    message = error_of(write(tmp_path, "{}"), ["train.lrr=1"])
    assert "train.lrr=1" in message and "did you mean 'train.lr'" in message


def test_unknown_top_level_key_lists_the_sections(tmp_path):
    message = error_of(write(tmp_path, "{}"), ["no_such_key=1"])
    assert "'no_such_key'" in message and "dataset" in message and "train" in message


@pytest.mark.parametrize("override, key", [
    ("train.lr=-1", "train.lr"),
    ("train.lr=abc", "train.lr"),
    ("train.epochs=1.5", "train.epochs"),
    ("train.conf_thresh=1.5", "train.conf_thresh"),
    ("train.ema_cap=-0.1", "train.ema_cap"),
    ("dataset.crop_size=500", "dataset.crop_size"),
    ("eval.window=100", "eval.window"),
    ("eval.mode=sliding", "eval.mode"),
    ("train.method=mean_teacher", "train.method"),
    ("augment.scale_range=[2.0, 0.5]", "augment.scale_range"),
    ("augment.cutmix_area=[0.1, 1.5]", "augment.cutmix_area"),
    ("train.betas=[0.9, 1.0]", "train.betas"),
    ("dataset.nclass=6", "dataset.nclass"),
    ("dataset.name=isaid", "dataset.name"),
    ("dataset.eval_exclude=[9]", "dataset.eval_exclude"),
    ("distill.weights.dino=-1", "distill.weights"),
    ("teachers.clip.enabled=false", "distill.fusion_weights.clip"),
])
def test_bad_value_names_the_key(tmp_path, override, key):
    message = error_of(write(tmp_path, "{}"), [override])
    assert f"'{key}" in message


def test_rs_mtdf_without_teachers_is_an_error(tmp_path):
    overrides = ["teachers.dino.enabled=false", "teachers.clip.enabled=false",
                 "distill.fusion_weights.dino=0", "distill.fusion_weights.clip=0"]
    assert "rs_mtdf" in error_of(write(tmp_path, "{}"), overrides)
    cfg = load_config(write(tmp_path, "{}"), overrides + ["train.method=fixmatch"])
    assert cfg.distill_teachers == ()


def test_single_teacher_ablation_is_a_config_change(tmp_path):
    cfg = load_config(write(tmp_path, "{}"), ["teachers.clip.enabled=false", "distill.fusion_weights.clip=0",
                                            "distill.fusion_weights.dino=0.2"])
    assert cfg.distill_teachers == ("dino",)


def test_invalid_yaml_and_missing_file_are_one_line_errors(tmp_path):
    assert "not found" in error_of(tmp_path / "nope.yaml")
    assert "not valid YAML" in error_of(write(tmp_path, "train: [1,\n"))
    assert "mapping" in error_of(write(tmp_path, "- 1\n- 2\n"))


def test_run_dir_fills_in_dataset_method_and_split(tmp_path):
    cfg = load_config(write(tmp_path, "{}"), ["dataset.split=5", "train.method=fixmatch",
                                            "teachers.dino.enabled=false", "teachers.clip.enabled=false",
                                            "distill.fusion_weights.dino=0", "distill.fusion_weights.clip=0"])
    assert cfg.run_dir == Path("exp/loveda/fixmatch/5")


def test_saved_config_reloads_to_the_same_values(tmp_path):
    cfg = load_config(write(tmp_path, "{}"), ["train.lr=3e-5", "eval.window=224"])
    save_config(cfg, tmp_path / "resolved.yaml")
    assert load_config(tmp_path / "resolved.yaml").to_dict() == cfg.to_dict()


def test_an_empty_override_value_is_an_error_and_null_means_none(tmp_path):
    message = error_of(write(tmp_path, "{}"), ["model.pretrained="])
    assert "model.pretrained=" in message and "empty" in message and "model.pretrained=null" in message
    assert load_config(write(tmp_path, "{}"), ["model.pretrained=null"]).model.pretrained is None


@pytest.mark.parametrize("key", ["dataset.root", "dataset.splits", "model.pretrained", "teachers.dino.weights",
                                 "teachers.clip.weights", "save_path"])
def test_an_empty_path_in_yaml_is_an_error_naming_the_key(tmp_path, key):
    section, _, field = key.rpartition(".")
    text = f'{field}: ""\n' if not section else "".join(
        f"{'  ' * depth}{part}:\n" for depth, part in enumerate(section.split("."))) + \
        f'{"  " * len(section.split("."))}{field}: ""\n'
    message = error_of(write(tmp_path, text), [])
    assert f"'{key}'" in message and "empty" in message


def test_an_empty_config_file_is_refused_and_braces_take_every_default(tmp_path):
    assert "is empty" in error_of(write(tmp_path, "# nothing here\n"), [])
    assert load_config(write(tmp_path, "{}")).train.lr == 5e-6


def test_a_key_given_twice_is_an_error_naming_both_lines(tmp_path):
    message = error_of(write(tmp_path, "train:\n  lr: 1.0e-5\n  lr: 2.0e-5\n"), [])
    assert "'lr' appears twice (lines 2 and 3)" in message


def test_a_byte_order_mark_is_fine_and_other_encodings_are_named(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_bytes("\ufefftrain:\n  lr: 1.0e-5\n".encode("utf-8"))
    assert load_config(path).train.lr == 1e-5
    path.write_bytes("# Gr\xfc\xdfe\ntrain:\n  lr: 1.0e-5\n".encode("latin-1"))
    assert "not UTF-8" in error_of(path, [])


def test_the_method_names_are_the_registrys(monkeypatch):
    import methods
    from methods import METHODS, Method

    with pytest.raises(ValidationError, match="unknown method 'mean_teacher'; choose one of supervised, fixmatch, "
                                              "unimatch_v2, rs_mtdf"):
        Config.model_validate({"train": {"method": "mean_teacher"}})
    # A method added to the registry is a valid config value, and its declared needs decide the teachers.
    monkeypatch.setitem(methods.METHODS, "mean_teacher", Method(METHODS["fixmatch"].step, unlabeled=True, n_strong=1,
                                                                teachers=True))
    cfg = Config.model_validate({"train": {"method": "mean_teacher"}})
    assert cfg.distill_teachers == ("dino", "clip")


def test_protocol_defaults_are_the_authors():
    """best.pth by the student (their scripts), their supervised schedule (batch x2, 3000 draws an epoch)."""
    train = Config().train
    assert (train.best_by, train.supervised_protocol, train.supervised_epoch_samples) == ("student", "reference", 3000)
    assert Config().eval.weights is None and Config().eval.blend == "uniform"
