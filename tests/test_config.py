"""Config: paper defaults, YAML + --set overrides, and errors that say how to fix."""

import subprocess
import sys

import pytest
import yaml

from activessf.config import (
    Config,
    ConfigError,
    config_digest,
    flatten,
    load_config,
    parse_override,
    presets,
    save_config,
)
from activessf.subtypes import SUBTYPES


def test_defaults_are_the_papers():
    c = Config()
    f = c.filter
    assert (f.blur_kernel, f.blur_sigma, f.kmeans_clusters, f.merged_clusters) == (3, 1.5, 20, 10)
    assert f.purple == [((30, 100, 0), (140, 255, 255))]
    assert f.deep_blue == [((95, 150, 50), (105, 255, 255))]
    assert (f.min_box, f.fill_rate, f.closing_kernel) == (70, 0.7, 0)
    assert c.embed.backbone == "resnet50" and c.prototypes.k == 11
    assert (c.select.alpha, c.select.bound_mode, c.select.lb, c.select.ub) == (0.5, "minmax", 15.0, 19.0)
    p = c.pretrain
    assert (p.weight_decay, p.batch_size, p.base_lr, p.warmup_epochs, p.epochs, p.options) == (
        0.05, 64, 1e-3, 5, 400, {})
    from activessf.ssl import METHODS

    assert METHODS["mae"].settings(p).mask_ratio == 0.75  # the paper's, declared by the method
    ft = c.finetune
    assert (ft.epochs, ft.layer_decay, ft.image_size) == (50, 0.75, 224)
    assert ft.num_classes is None and len(SUBTYPES) == 11  # the classes come from the labelled set; set 11 to check
    assert c.evaluate.folds == 5
    assert list(c.synth.mix) == list(SUBTYPES)


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("filter:\n  fill_rate: 0.6\n  min_box: 50\nselect:\n  alpha: 2\n")
    c = load_config(path, ["filter.fill_rate=0.5", "select.bound_mode=absolute", "synth.mix.CA-MK=0.2"])
    assert c.filter.fill_rate == 0.5 and c.filter.min_box == 50  # --set wins over the file
    assert c.select.alpha == 2.0 and c.select.bound_mode == "absolute"
    assert c.synth.mix["CA-MK"] == 0.2 and c.synth.mix["G-MK"] == Config().synth.mix["G-MK"]


def test_override_values_are_yaml():
    assert parse_override("filter.purple=[[[1,2,3],[4,5,6]]]") == (["filter", "purple"], [[[1, 2, 3], [4, 5, 6]]])
    assert parse_override("embed.weights=null") == (["embed", "weights"], None)
    with pytest.raises(ConfigError, match="section.field=value"):
        parse_override("filter.fill_rate")


@pytest.mark.parametrize(
    "override, expected",
    [
        ("filter.fill_rate=1.5", ["filter.fill_rate = 1.5", "<= 1", "Default: 0.7"]),
        ("filter.min_box=0", ["filter.min_box = 0", ">= 1", "Default: 70"]),
        ("select.bound_mode=median", ["select.bound_mode", "'minmax', 'absolute', 'quantile'"]),
        ("filter.fil_rate=0.5", ["filter.fil_rate: unknown field", "Did you mean 'fill_rate'?"]),
        ("filtr.fill_rate=0.5", ["filtr: unknown field", "Did you mean 'filter'?"]),
        ("filter.blur_kernel=4", ["blur_kernel must be odd"]),
        ("filter.merged_clusters=25", ["merged_clusters (25) must be <= kmeans_clusters (20)"]),
        ("select.lb=20", ["lb (20.0) must be <= ub (19.0)"]),
        ("filter.purple=[[[30,100,0],[200,255,255]]]", ["H range [30, 200]", "179"]),
        ("synth.mix.XX=1", ["unknown subtypes ['XX']"]),
        ("synth.labelled=20", ["labelled (20) must be 0 or >= 11"]),
        ("pretrain.image_size=100", ["multiple of patch_size"]),
    ],
)
def test_bad_values_name_field_and_range(override, expected):
    with pytest.raises(ConfigError) as err:
        load_config(overrides=[override])
    for text in expected:
        assert text in str(err.value), str(err.value)
    assert "--set section.field=value" in str(err.value)


def test_all_errors_reported_at_once():
    with pytest.raises(ConfigError) as err:
        load_config(overrides=["filter.fill_rate=2", "select.alpha=-1"])
    assert "filter.fill_rate" in str(err.value) and "select.alpha" in str(err.value)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(tmp_path / "list.yaml")
    (tmp_path / "bad.yaml").write_text("filter: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="unknown preset 'nope'"):
        load_config(preset="nope")


def test_save_roundtrip_and_digest(tmp_path):
    c = load_config(overrides=["select.alpha=1.0", "filter.min_box=64"])
    path = save_config(c, tmp_path / "out")
    again = load_config(path)
    assert again == c
    assert config_digest(again.filter) == config_digest(c.filter) == c.filter.digest()
    assert config_digest(Config().filter) != c.filter.digest()
    assert yaml.safe_load(path.read_text())["filter"]["min_box"] == 64
    assert flatten(c)["select.alpha"] == 1.0


def test_presets_load_and_combine_in_order():
    assert {"demo", "wbc", "cpu", "gpu"} <= set(presets())
    for name in presets():
        load_config(preset=name)
    both = load_config(preset="wbc,cpu")
    assert both.filter.mask == "absorbance" and both.pretrain.model == "tiny"  # one from each
    assert load_config(preset="cpu,demo").pretrain.model == "micro"  # the later preset wins
    assert load_config(preset="demo,cpu").pretrain.model == "tiny"
    gpu = load_config(preset="gpu")
    assert (gpu.pretrain.model, gpu.pretrain.epochs, gpu.finetune.epochs, gpu.pretrain.batch_size) == \
        ("base", 400, 50, 64)  # the paper's recipe: the preset adds only what the hardware decides
    with pytest.raises(ConfigError, match="unknown preset 'nope'"):
        load_config(preset="wbc,nope")


def test_cli_reports_config_errors_with_exit_code_2():
    out = subprocess.run([sys.executable, "-m", "activessf.cli", "config", "--set", "filter.fill_rate=7"],
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert "filter.fill_rate = 7" in out.stderr and "Traceback" not in out.stderr


def test_cli_prints_resolved_section_and_checks_the_method_settings(capsys):
    """In this process (the subprocess test above proves the entry point); the method's own settings are
    checked by the method: a key of another method is an error that lists the right ones."""
    from activessf.cli import main

    assert main(["config", "--section", "select", "--set", "select.alpha=1"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["alpha"] == 1
    assert main(["config", "--section", "pretrain", "--set", "pretrain.options.mask_ratio=0.6"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["options"] == {"mask_ratio": 0.6}
    assert main(["config", "--set", "pretrain.method=mocov3", "--set", "pretrain.options.mask_ratio=0.6"]) == 2
    err = capsys.readouterr().err
    assert "pretrain.options for method 'mocov3': mask_ratio" in err and "temperature (default 0.2)" in err
    assert main(["config", "--set", "pretrain.mask_ratio=0.6"]) == 2
    assert "go under pretrain.options" in capsys.readouterr().err


def test_pipeline_command_refuses_smears_without_labelled_cells(capsys):
    from activessf.cli import main

    assert main(["pipeline", "--smears", "fields/", "--work-dir", "w"]) == 2  # before any Ray starts
    assert "--smears needs --labelled" in capsys.readouterr().err
