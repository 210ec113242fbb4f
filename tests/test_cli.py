"""The `activessf` command as a CLI: exit codes, fail-fast model checks, --json, --quiet, --version, and the
per-epoch progress line. No Ray: the checks run before it would start (the lines from Ray Train workers are
checked in tests/stages/test_pretrain_stage.py and in the demo job's logs)."""

import json
import re
import sys
import time

import pytest
import torch

from activessf.cli import main, package_version, root_cause
from activessf.training.progress import EpochProgress, epoch_line, format_duration
from conftest import write_cells


def ray_started() -> bool:
    return "ray" in sys.modules and sys.modules["ray"].is_initialized()


def test_the_epoch_line_says_where_training_is_and_how_long_it_has_left(capsys):
    assert [format_duration(s) for s in (0, 42.4, 72, 3599, 7500, float("nan"), -1)] == \
        ["0s", "42s", "1m12s", "59m59s", "2h05m", "?", "?"]
    assert epoch_line(3, 50, 0.42131, 1.2e-4, 212.4, 72, 1180, "pretrain mae") == \
        "pretrain mae  epoch 3/50  loss 0.4213  lr 1.2e-04  212 img/s  elapsed 1m12s  eta 19m40s"
    resumed = EpochProgress(total=10, first_epoch=4, label="x")  # resumed at epoch 4: 2 epochs trained here
    resumed.started -= 20
    line = resumed.update(5, 1.0, 1e-3, 10.0)
    assert "epoch 6/10" in line and "elapsed 20s" in line and "eta 40s" in line  # 10 s per epoch, 4 to go
    assert capsys.readouterr().out == line + "\n"
    EpochProgress(total=2, enabled=False).update(0, 1.0, 1e-3, 10.0)  # another rank, or run.quiet
    assert capsys.readouterr().out == ""


def test_a_misspelt_model_exits_2_with_suggestions_before_anything_runs(tmp_path, capsys):
    import timm  # noqa: F401  (imported once per process; timed here is the check itself)

    import activessf.models  # noqa: F401

    cells = write_cells(tmp_path / "cells", {"a": 3, "b": 3})
    started = time.time()
    code = main(["embed", "--labelled", str(cells), "--out", str(tmp_path / "emb"), "--set", "embed.backbone=resnt50",
                 "--work-dir", str(tmp_path / "w")])
    seconds = time.time() - started
    err = capsys.readouterr().err
    assert code == 2 and seconds < 1.0, seconds
    assert "embed.backbone: unknown model 'resnt50'" in err and "did you mean: resnet50" in err
    assert not ray_started() and not (tmp_path / "emb").exists() and not (tmp_path / "w").exists()
    # the platform's own encoders are in the registry; pretraining's method is checked too
    assert main(["config", "--set", "finetune.backbone=convvit_activessf"]) == 0
    assert main(["config", "--set", "finetune.backbone=convvit_activesf"]) == 2
    assert "did you mean: convvit_activessf" in capsys.readouterr().err
    assert main(["pretrain", "--out", str(tmp_path / "pt"), "--set", "pretrain.method=mea"]) == 2
    assert "unknown SSL method 'mea'" in capsys.readouterr().err and not ray_started()


def test_weights_that_do_not_fit_exit_2_naming_the_keys(tmp_path, capsys):
    import timm

    torch.save(timm.create_model("test_resnet", num_classes=0).state_dict(), tmp_path / "resnet.pt")
    cells = write_cells(tmp_path / "cells", {"a": 3, "b": 3})
    args = ["embed", "--labelled", str(cells), "--out", str(tmp_path / "emb"), "--work-dir", str(tmp_path / "w")]
    assert main([*args, "--set", "embed.backbone=resnet18", "--set", f"embed.weights={tmp_path / 'resnet.pt'}"]) == 2
    err = capsys.readouterr().err
    assert "embed.weights:" in err and "does not fit resnet18" in err
    assert re.search(r"\d+ keys missing \(e\.g\. conv1\.weight", err)
    assert "of another shape (e.g. bn1.weight (32,) in the file, (64,) in the model" in err
    assert main([*args, "--set", "embed.weights=nowhere.pt"]) == 2
    assert "embed.weights: weights file nowhere.pt does not exist" in capsys.readouterr().err
    # a ViT's weights at another input size: the position embedding's shape is named
    torch.save(timm.create_model("test_vit", num_classes=3).state_dict(), tmp_path / "vit.pt")
    assert main(["finetune", "--labelled", str(cells), "--out", str(tmp_path / "ft"), "--init",
                 str(tmp_path / "vit.pt"), "--set", "finetune.backbone=test_vit",
                 "--set", "finetune.backbone_kwargs={img_size: 64}"]) == 2
    assert "1 key of another shape (e.g. pos_embed" in capsys.readouterr().err and not ray_started()


def test_json_puts_exactly_one_document_on_stdout(tmp_path, capsys):
    def run(*argv):
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, json.loads(out), err  # the whole of stdout parses

    code, doc, _ = run("config", "--section", "run", "--json", "-q")
    assert code == 0 and doc["quiet"] is True  # --quiet travels in the config (to Ray Train workers too)
    code, doc, _ = run("--json", "methods")  # before the command or after it
    assert code == 0 and "mae" in [m["name"] for m in doc]
    cells = write_cells(tmp_path / "cells", {"a": 12, "b": 12})
    code, doc, err = run("split", "--labelled", str(cells), "--out", str(tmp_path / "split"), "--json")
    assert code == 0 and doc["tune"]["cells"] + doc["eval"]["cells"] == 24
    assert "fine-tune and ablate on" in err  # the text for a person went to stderr
    code, doc, err = run("split", "--labelled", str(cells), "--out", str(tmp_path / "split"), "--json")
    assert code == 2 and doc["exit_code"] == 2 and doc["error"]["type"] == "OutputExists"
    assert "already holds outputs" in doc["error"]["message"] and "already holds outputs" in err


def test_a_failure_while_running_exits_1_with_one_line_and_the_traceback_kept(tmp_path, capsys):
    for run in ("a", "b"):
        (tmp_path / run).mkdir()
        (tmp_path / run / "metrics.json").write_text("{}")  # not what `finetune` writes
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("activessf compare: failed: KeyError: ")
    kept = re.search(r"traceback: (\S+); -v prints it", err).group(1)
    assert "Traceback (most recent call last)" in open(kept).read()
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "-v"]) == 1
    assert "Traceback (most recent call last)" in capsys.readouterr().err


def test_ray_wrapped_errors_are_reported_by_what_the_worker_raised():
    from ray.exceptions import RayTaskError
    from ray.train import ControllerError, WorkerGroupError

    cause = KeyError("label")
    task = RayTaskError("fit_fold", "Traceback ...", cause).as_instanceof_cause()
    assert isinstance(task, KeyError) and root_cause(task) is cause
    group = WorkerGroupError("rank 0 failed", {1: ValueError("one"), 0: task})
    assert root_cause(RayTaskError("fit_fold", "...", group)) is cause  # task -> worker group -> rank 0 -> task
    assert root_cause(ControllerError(cause)) is cause
    plain = ValueError("mine")
    assert root_cause(plain) is plain


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"activessf {package_version()}"
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", package_version())
