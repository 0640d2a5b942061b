"""The configuration schema: defaults, overrides, and one clear error per kind of mistake."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from dataset.info import DATASETS
from util.config import (
    MODEL_KEYS,
    PATCH_SIZE,
    Config,
    config_differences,
    flatten,
    load_config,
    model_differences,
    parse_override,
    save_config,
)
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


# ----------------------------------------------------------------------------------------------------------
# A loaded config never changes; Config.replace derives a changed copy through the same validation.


def test_a_loaded_config_is_frozen(tmp_path):
    cfg = load_config(write(tmp_path, "{}"))
    with pytest.raises(ValidationError, match="frozen"):
        cfg.train.epochs = 1
    with pytest.raises(ValidationError, match="frozen"):
        cfg.eval = Config().eval
    assert cfg.train.epochs == 60
    # Sequences are tuples (saved as lists): no value of a loaded config can change in place.
    excluded = load_config(write(tmp_path, "dataset: {eval_exclude: [5]}\n")).dataset
    assert excluded.eval_exclude == (5,) and excluded.excluded_classes == (5,)


def test_replace_derives_a_validated_copy_and_leaves_the_original(tmp_path):
    cfg = load_config(write(tmp_path, "{}"))
    changed = cfg.replace({"train.epochs": 1, "eval.window": 28, "model.pretrained": None})
    assert (changed.train.epochs, changed.eval.window, changed.model.pretrained) == (1, 28, None)
    assert (cfg.train.epochs, cfg.eval.window) == (60, None)
    assert changed.to_dict() == load_config(write(tmp_path, "{}"), ["train.epochs=1", "eval.window=28",
                                                                   "model.pretrained=null"]).to_dict()
    for change, words in (({"eval.window": 15}, ["'eval.window'", "15", "patch size"]),
                          ({"train.epochs": 0}, ["'train.epochs'"]),
                          ({"eval.windw": 14}, ["'eval.windw'", "did you mean 'eval.window'"]),
                          ({"dataset.nclass": 7}, ["'dataset.nclass'", "derived from dataset.name"])):
        with pytest.raises(ConfigError) as info:
            cfg.replace(change)
        assert all(w in str(info.value) for w in words) and "\n" not in str(info.value), str(info.value)


# ----------------------------------------------------------------------------------------------------------
# dataset.nclass is derived from dataset.name; distill.fusion is fusion_weights with every teacher weight 0.


def test_nclass_is_derived_from_the_dataset_name(tmp_path):
    for name, info in DATASETS.items():
        assert load_config(write(tmp_path, "{}"), [f"dataset.name={name}"]).dataset.nclass == info.nclass
    assert "nclass" not in Config().to_dict()["dataset"] and "dataset.nclass" not in MODEL_KEYS
    message = error_of(write(tmp_path, "dataset: {name: potsdam, nclass: 6}\n"))
    assert "'dataset.nclass'" in message and "derived from dataset.name (potsdam: 6 classes)" in message
    message = error_of(write(tmp_path, "{}"), ["dataset.nclass=7"])
    assert "'dataset.nclass'" in message and "loveda: 7 classes" in message


def test_fusion_is_one_knob_and_the_retired_switch_names_its_replacement(tmp_path):
    assert "distill.fusion" not in MODEL_KEYS and "fusion" not in Config().to_dict()["distill"]
    message = error_of(write(tmp_path, "{}"), ["distill.fusion=false"])
    assert "'distill.fusion'" in message and "distill.fusion_weights={student: 1, dino: 0, clip: 0}" in message
    assert "'distill.fusion'" in error_of(write(tmp_path, "distill: {fusion: true}\n"))
    none = load_config(write(tmp_path, "{}"), ["distill.fusion_weights={student: 1, dino: 0, clip: 0}"])
    assert not none.distill.fuses and Config().distill.fuses
    # Without fusion the features are used as they are: a student weight other than 1 would be a no-op.
    message = error_of(write(tmp_path, "{}"), ["distill.fusion_weights={student: 0.8, dino: 0, clip: 0}"])
    assert "'distill.fusion_weights.student'" in message and "set it to 1" in message
    # ... unless the method fuses nothing anyway (no distillation).
    load_config(write(tmp_path, "{}"), ["train.method=fixmatch", "distill.fusion_weights={dino: 0, clip: 0}"])


def saved_run(tmp_path: Path, edit) -> Path:
    """A run folder as an earlier version left it: config.yaml (with `edit` applied to its dict) and train.log."""
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    raw = Config().to_dict()
    edit(raw)
    (run / "config.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    (run / "train.log").write_text("")
    return run / "config.yaml"


def test_a_runs_saved_config_from_before_the_retired_keys_still_loads(tmp_path):
    def old(raw, nclass=7, fusion=True):
        raw["dataset"]["nclass"] = nclass
        raw["distill"]["fusion"] = fusion

    assert load_config(saved_run(tmp_path, old)).to_dict() == Config().to_dict()
    no_fusion = load_config(saved_run(tmp_path, lambda raw: old(raw, fusion=False)))
    assert no_fusion.distill.fusion_weights == {"student": 1.0, "dino": 0.0, "clip": 0.0}
    # A class count other than the dataset's was refused then and is refused now.
    path = saved_run(tmp_path, lambda raw: old(raw, nclass=6))
    message = error_of(path)
    assert str(path) in message and "'dataset.nclass'" in message and "loveda has 7 classes" in message
    # Overrides on top of a saved config use today's keys; the same file outside a run folder is a user's.
    assert "'distill.fusion'" in error_of(saved_run(tmp_path, lambda raw: None), ["distill.fusion=true"])
    path = saved_run(tmp_path, old)
    (path.parent / "train.log").unlink()
    assert "'dataset.nclass'" in error_of(path)


def test_checkpoint_configs_from_before_the_retired_keys_compare_in_todays_form():
    ours = Config().to_dict()
    theirs = Config().to_dict()
    theirs["dataset"]["nclass"], theirs["distill"]["fusion"] = 7, True
    assert config_differences(theirs, ours) == {} and model_differences(theirs, ours) == {}
    # fusion: false built no projections whatever the weights said: today's {student: 1, dino: 0, clip: 0}.
    theirs["distill"]["fusion"] = False
    assert set(model_differences(theirs, ours)) == {"distill.fusion_weights.student", "distill.fusion_weights.dino",
                                                    "distill.fusion_weights.clip"}
    none = Config().replace({"distill.fusion_weights": {"student": 1, "dino": 0, "clip": 0}}).to_dict()
    assert model_differences(theirs, none) == {} and config_differences(theirs, none) == {}
    # Another dataset is named by dataset.name alone (nclass no longer counts as a key of its own).
    theirs["distill"]["fusion"] = True
    other = Config().replace({"dataset.name": "potsdam"}).to_dict()
    assert list(model_differences(theirs, other)) == ["dataset.name"]


def test_the_patch_size_has_one_definition_and_the_config_imports_no_torch():
    from model import encoder

    assert encoder.PATCH_SIZE is PATCH_SIZE == 14
    code = "import sys, util.config; print(sorted({'torch', 'timm'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ----------------------------------------------------------------------------------------------------------
# One source for every default: the shipped dataset configs state every key at its schema default (SPEC §5).

DATASET_CONFIGS = ("loveda", "potsdam", "deepglobe")
# Not held to the defaults: tiny CPU runs (a tiny student from scratch, small crops) whose values differ by
# design, as their headers say. They must load (test_every_shipped_config_loads), nothing more.
EXEMPT_CONFIGS = ("demo", "learning_check")
# What sets one dataset's config apart from another's: the dataset and where its files are. Each is checked
# against the dataset instead of the schema default (which is LoveDA's).
DATASET_KEYS = ("dataset.name", "dataset.root", "dataset.splits", "dataset.eval_exclude")
# A value that is not the schema default says why on its own line, in a trailing comment that starts so.
DIFFERS = "# not the default:"


def line_comments(path: Path) -> dict[str, str]:
    """{dotted key: the trailing comment of the line its value is on ('' for none)} for every leaf of a YAML file."""
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    comments: dict[str, str] = {}

    def walk(node: yaml.MappingNode, prefix: str) -> None:
        for key, value in node.value:
            if isinstance(value, yaml.MappingNode):
                walk(value, f"{prefix}{key.value}.")
            else:
                _, mark, comment = lines[value.start_mark.line].partition(" #")
                comments[prefix + key.value] = f"#{comment}".strip() if mark else ""

    walk(yaml.compose(text), "")
    return comments


def test_every_shipped_config_has_a_rule():
    assert sorted(p.stem for p in SHIPPED) == sorted(DATASET_CONFIGS + EXEMPT_CONFIGS)


@pytest.mark.parametrize("name", DATASET_CONFIGS)
def test_dataset_config_holds_every_key_at_its_default_or_says_why(name):
    path = REPO / "configs" / f"{name}.yaml"
    values, comments = flatten(yaml.safe_load(path.read_text())), line_comments(path)
    defaults = flatten(Config().to_dict())
    assert set(values) == set(defaults) == set(comments)
    for key, default in defaults.items():
        if key in DATASET_KEYS:
            continue
        differs = values[key] != default
        assert comments[key].startswith(DIFFERS) == differs, (
            f"{path.name}: {key} is {values[key]!r}, the default {default!r}: a value other than the default "
            f"needs a comment '{DIFFERS} <why>' on its line, and only such a value has one")
    info = DATASETS[name]
    assert (values["dataset.name"], values["dataset.root"], values["dataset.splits"]) == (
        name, f"dataset/{name}", f"splits/{name}")
    assert values["dataset.eval_exclude"] in (None, list(info.eval_exclude))


def test_the_dataset_configs_agree_on_every_key_but_the_datasets_own():
    values = {name: flatten(yaml.safe_load((REPO / "configs" / f"{name}.yaml").read_text()))
              for name in DATASET_CONFIGS}
    first = values[DATASET_CONFIGS[0]]
    for name, other in values.items():
        diffs = {k for k in set(first) | set(other) if first.get(k) != other.get(k)}
        assert diffs <= set(DATASET_KEYS), (name, sorted(diffs - set(DATASET_KEYS)))
