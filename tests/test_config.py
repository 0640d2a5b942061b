"""The configuration schema: defaults, overrides, and one clear error per kind of mistake."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from util.catalog import DATASETS
from util.config import (
    PATCH_SIZE,
    Config,
    config_differences,
    load_config,
    model_differences,
    parse_override,
    save_config,
    upgrade_saved,
    with_absolute_paths,
)
from util.errors import ConfigError, OutputError

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


def test_defaults_are_the_methods_published_values():
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
    assert cfg.run_dir == Path.cwd() / "exp/loveda/fixmatch/5"


def test_a_numeric_split_is_the_folder_name_as_typed(tmp_path):
    # 0.125 % of LoveDA is 4 tiles: a fractional share is as much a folder name as 5.
    assert load_config(write(tmp_path, "{}"), ["dataset.split=0.125"]).dataset.split == "0.125"
    assert load_config(write(tmp_path, "dataset: {split: 5}\n")).dataset.split == "5"


def test_saved_config_reloads_to_the_same_values(tmp_path):
    cfg = load_config(write(tmp_path, "{}"), ["train.lr=3e-5", "eval.window=224"])
    save_config(cfg, tmp_path / "resolved.yaml")
    assert load_config(tmp_path / "resolved.yaml").to_dict() == cfg.to_dict()


def test_an_empty_override_value_is_an_error_and_null_means_none(tmp_path):
    message = error_of(write(tmp_path, "{}"), ["model.pretrained="])
    assert "model.pretrained=" in message and "empty" in message and "model.pretrained=null" in message
    assert load_config(write(tmp_path, "{}"), ["model.pretrained=null"]).model.pretrained is None


@pytest.mark.parametrize("key", ["dataset.root", "dataset.lists", "model.pretrained", "teachers.dino.weights",
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


def test_the_config_takes_its_method_names_from_the_registry():
    from methods import METHODS

    names = ", ".join(METHODS)
    assert names == "supervised, fixmatch, unimatch_v2, rs_mtdf"
    with pytest.raises(ValidationError, match=f"unknown method 'mean_teacher'; choose one of {names}"):
        Config.model_validate({"train": {"method": "mean_teacher"}})
    assert Config.model_validate({"train": {"method": "rs_mtdf"}}).distill_teachers == ("dino", "clip")
    assert Config.model_validate({"train": {"method": "fixmatch"}}).distill_teachers == ()


def test_a_config_loaded_before_the_methods_are_registered_is_a_loud_error():
    code = "import util.config as c; c.load_config('configs/demo.yaml')"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.returncode != 0 and "no training method is registered: import methods" in out.stderr


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
                          ({"dataset.nclass": 7}, ["'dataset.nclass'", "valid keys here: name"])):
        with pytest.raises(ConfigError) as info:
            cfg.replace(change)
        assert all(w in str(info.value) for w in words) and "\n" not in str(info.value), str(info.value)


# ----------------------------------------------------------------------------------------------------------
# Derived values: the class count and the data folders follow dataset.name; no fusion is fusion weights 0.


def test_the_class_count_and_the_data_folders_follow_the_dataset_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name, info in DATASETS.items():
        dataset = load_config(write(tmp_path, "{}"), [f"dataset.name={name}"]).dataset
        assert dataset.nclass == info.nclass
        assert (dataset.root, dataset.lists) == (str(tmp_path / "data" / name), str(tmp_path / "splits" / name))
    assert "nclass" not in Config().to_dict()["dataset"]
    assert "'dataset.nclass'" in error_of(write(tmp_path, "{}"), ["dataset.nclass=7"])
    given = load_config(write(tmp_path, "dataset: {name: potsdam, root: /data/tiles}\n")).dataset
    assert given.root == "/data/tiles" and given.lists.endswith("splits/potsdam")


def test_no_fusion_is_every_teacher_weight_zero_with_the_student_weight_one(tmp_path):
    none = load_config(write(tmp_path, "{}"), ["distill.fusion_weights={student: 1, dino: 0, clip: 0}"])
    assert not none.distill.fuses and Config().distill.fuses
    # Without fusion the features are used as they are: a student weight other than 1 would be a no-op.
    message = error_of(write(tmp_path, "{}"), ["distill.fusion_weights={student: 0.8, dino: 0, clip: 0}"])
    assert "'distill.fusion_weights.student'" in message and "set it to 1" in message
    # ... unless the method fuses nothing anyway (no distillation).
    load_config(write(tmp_path, "{}"), ["train.method=fixmatch", "distill.fusion_weights={dino: 0, clip: 0}"])


def test_model_differences_name_the_dataset_first_and_ignore_teachers_of_methods_without_them():
    ours = Config().to_dict()
    other = Config().replace({"dataset.name": "potsdam", "teachers.clip.input_size": 112}).to_dict()
    assert list(model_differences(other, ours)) == ["dataset.name", "teachers.clip.input_size"]
    fixmatch = Config().replace({"train.method": "fixmatch"})
    assert model_differences(fixmatch.to_dict(), fixmatch.replace({"teachers.clip.input_size": 112}).to_dict()) == {}
    assert config_differences(ours, ours) == {}


# ----------------------------------------------------------------------------------------------------------
# Paths: absolute once loaded, `~` expanded, so a run's config.yaml reads the same files from any folder.


def test_loaded_paths_are_absolute_and_a_tilde_is_the_home_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    cfg = load_config(write(tmp_path, "{}"), ["save_path=~/runs/{method}", "model.pretrained=null"])
    assert cfg.dataset.root == str(tmp_path / "data" / "loveda")
    assert cfg.dataset.lists == str(tmp_path / "splits" / "loveda")
    assert cfg.run_dir == tmp_path / "home" / "runs" / "rs_mtdf" and cfg.model.pretrained is None
    assert cfg.teachers.clip.weights == str(tmp_path / "pretrained" / "ViT-L-14.pt")
    # Saved and read again from elsewhere, it names the same files.
    save_config(cfg, tmp_path / "saved.yaml")
    monkeypatch.chdir(REPO)
    assert load_config(tmp_path / "saved.yaml").to_dict() == cfg.to_dict()


# ----------------------------------------------------------------------------------------------------------
# Renamed keys: refused in a config file or override, naming the new key; read in a run's saved config.


def saved_before_the_rename(folder: Path, lists: str) -> Path:
    """config.yaml of a run folder as train.py wrote it while dataset.lists was still dataset.splits."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.yaml"
    save_config(Config().replace({"dataset.lists": lists}), path)
    path.write_text(path.read_text().replace("  lists: ", "  splits: "))
    (folder / "progress.json").write_text("{}")
    return path


def test_the_old_key_of_the_lists_folder_is_refused_naming_the_new_one(tmp_path):
    assert "unknown key 'dataset.splits' (did you mean 'dataset.lists'?" in \
        error_of(write(tmp_path, "dataset: {splits: /data/lists}\n"))
    assert "unknown key 'dataset.splits' (did you mean 'dataset.lists'?" in \
        error_of(write(tmp_path, "{}"), ["dataset.splits=/data/lists"])


def test_a_run_saved_before_the_lists_key_was_renamed_loads_from_its_folder_only(tmp_path):
    path = saved_before_the_rename(tmp_path / "run", "/data/lists")
    assert load_config(path).dataset.lists == "/data/lists"
    (tmp_path / "run" / "progress.json").unlink()  # no longer a run folder: a config file like any other
    assert "did you mean 'dataset.lists'" in error_of(path)


def test_upgrading_a_saved_config_keeps_the_new_key_where_both_are_there():
    assert upgrade_saved({"dataset": {"splits": "/old", "name": "potsdam"}}) == \
        {"dataset": {"name": "potsdam", "lists": "/old"}}
    assert upgrade_saved({"dataset": {"splits": "/old", "lists": "/new"}}) == {"dataset": {"lists": "/new"}}


def test_save_config_is_atomic_and_a_failed_write_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "config.yaml"
    save_config(Config(), path)
    before = path.read_bytes()

    def full_disk(self, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full_disk)
    with pytest.raises(OutputError, match="No space left on device"):
        save_config(Config().replace({"train.epochs": 3}), path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["config.yaml"]


def test_the_patch_size_has_one_definition_and_the_config_imports_no_torch():
    from model import encoder

    assert encoder.PATCH_SIZE is PATCH_SIZE == 14
    code = "import sys, util.config; print(sorted({'torch', 'timm'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ----------------------------------------------------------------------------------------------------------
# The shipped dataset configs are short: the dataset, where its files are, and what users edit most.


@pytest.mark.parametrize("name", ("loveda", "potsdam", "deepglobe"))
def test_a_dataset_config_is_its_dataset_and_the_defaults(name):
    cfg = load_config(REPO / "configs" / f"{name}.yaml")
    assert cfg.dataset.name == name and cfg.dataset.excluded_classes == DATASETS[name].eval_exclude
    defaults = Config().replace({"dataset.name": name, "dataset.root": f"data/{name}",
                                 "dataset.lists": f"splits/{name}"})
    assert cfg.to_dict() == with_absolute_paths(defaults).to_dict()


def test_a_key_inside_a_mapping_changes_that_entry_of_the_resolved_mapping(tmp_path):
    """The shipped configs do not spell out distill.fusion_weights: an override of one entry must change that
    entry of the defaults, not replace the mapping by one entry (student weight missing: refused)."""
    cfg = load_config(write(tmp_path, "{}"), ["distill.fusion_weights.clip=0.2", "distill.fusion_weights.dino=0"])
    assert cfg.distill.fusion_weights == {"student": 0.8, "dino": 0.0, "clip": 0.2}
    spelled = load_config(write(tmp_path, "distill: {weights: {dino: 1.0, clip: 0.0}}\n"), ["distill.weights.clip=0.5"])
    assert spelled.distill.weights == {"dino": 1.0, "clip": 0.5}


def numeric_fields(schema: dict, node: dict | None = None, key: str = "") -> dict[str, object]:
    """{dotted key: a value of YAML booleans in that field's shape} for every field of the schema holding numbers
    (read from the JSON schema, not from the validator under test)."""
    node = schema if node is None else node
    if "$ref" in node:
        node = schema["$defs"][node["$ref"].rsplit("/", 1)[1]]
    if "properties" in node:
        found: dict[str, object] = {}
        for name, child in node["properties"].items():
            found.update(numeric_fields(schema, child, f"{key}.{name}".lstrip(".")))
        return found
    shapes = node.get("anyOf", [node])
    for shape in shapes:
        if shape.get("type") in ("integer", "number"):
            return {key: True}
        if shape.get("type") == "array" and any(s.get("type") in ("integer", "number")
                                                for s in shape.get("prefixItems", [shape.get("items", {})])):
            return {key: [True] * len(shape.get("prefixItems", [None]))}
        if shape.get("type") == "object" and shape.get("additionalProperties", {}).get("type") == "number":
            return {key: dict.fromkeys(shape["propertyNames"]["enum"][:1], True)}
    return {}


def test_a_yaml_boolean_is_refused_by_every_numeric_field(tmp_path):
    # YAML reads yes/no/on/off/true/false as booleans; pydantic's lax mode would take them as 1 and 0.
    fields = numeric_fields(Config.model_json_schema())
    assert len(fields) > 40 and {"train.lr", "train.epochs", "train.betas", "distill.fusion_weights"} <= set(fields)
    for key, value in fields.items():
        section, *inner, name = key.split(".")
        raw: dict = {}
        node = raw.setdefault(section, {})
        for part in inner:
            node = node.setdefault(part, {})
        node[name] = value
        path = write(tmp_path, json.dumps(raw))
        message = error_of(path)
        assert f"'{key}'" in message and "YAML boolean" in message, (key, message)


@pytest.mark.parametrize("override", ["train.epochs=yes", "train.lr=true", "distill.fusion_weights.clip=on"])
def test_a_boolean_override_of_a_number_is_refused(tmp_path, override):
    message = error_of(write(tmp_path, "{}"), [override])
    assert override.split("=")[0].rsplit(".", 1)[0] in message and "YAML boolean" in message


@pytest.mark.parametrize(("key", "printed"), [
    ("distill.fusion_weights.clip", "0.1"),                       # an entry of a mapping
    ("distill.fusion_weights", "student: 0.8\ndino: 0.1\nclip: 0.1"),  # a mapping
    ("teachers.dino", "enabled: true\narch: tiny\nweights: null\nprecision: fp32"),  # a section
    ("teachers.dino.weights", "null"),                            # as YAML writes it, not Python's None
    ("train.compile", "false"),
    ("train.betas", "[0.9, 0.999]"),
    ("dataset.split", "10"),
])
def test_get_prints_any_key_of_the_resolved_config_as_yaml(capsys, key, printed):
    from util.cli import print_config_value

    print_config_value(load_config(REPO / "configs" / "demo.yaml"), key)
    assert capsys.readouterr().out == printed + "\n"


def test_get_of_an_entry_a_mapping_lacks_is_one_error_naming_the_key(capsys):
    from util.cli import print_config_value

    cfg = load_config(REPO / "configs" / "demo.yaml", ["teachers.clip.enabled=false",
                                                      "distill.fusion_weights={student: 0.8, dino: 0.2}"])
    with pytest.raises(ConfigError, match=r"^--get distill.fusion_weights.clip: no such key"):
        print_config_value(cfg, "distill.fusion_weights.clip")
