"""The Ray Data filter stage end to end on a real local Ray: bad files, reruns, outputs, MLflow."""

import json
import os
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from activessf.config import Config, SynthConfig, load_config
from activessf.data.sources import list_inputs
from activessf.data.synth import paint_field
from activessf.imageio import decode_png, write_png
from activessf.regions.filter import filter_image
from activessf.regions.records import read_table
from activessf.stage import OutputExists
from activessf.stages.filter import run_filter
from badfiles import TEST_MAX_PIXELS, write_bad_files

pytestmark = pytest.mark.ray


def config() -> Config:
    return load_config(overrides=[f"filter.max_pixels={TEST_MAX_PIXELS}"])


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    good = tmp_path_factory.mktemp("good")
    cfg = SynthConfig(width=320, height=256, rbc_coverage=0.25)
    for i, names in enumerate([("G-MK",), ("N-MK", "S-MK"), ("HL-MK",)]):
        write_png(good / f"field_{i}.png", paint_field(cfg, np.random.default_rng([i, 5]), list(names)).image)
    mixed = tmp_path_factory.mktemp("mixed")
    for p in good.iterdir():
        (mixed / p.name).write_bytes(p.read_bytes())
    cases = write_bad_files(mixed)
    return good, mixed, cases


def rows_by_source(out):
    t = read_table(out, "regions").to_pylist()
    out_rows = {}
    for r in t:
        out_rows.setdefault(os.path.basename(r["source"]), []).append(
            (r["region_id"], r["x"], r["y"], r["w"], r["h"], r["area"], round(r["fill_rate"], 6)))
    return {k: sorted(v) for k, v in out_rows.items()}


def test_bad_files_become_error_rows_and_good_regions_are_unchanged(ray_cluster, inputs, tmp_path):
    good, mixed, cases = inputs
    cfg = config()
    clean = run_filter(cfg, str(good), tmp_path / "clean")
    summary = run_filter(cfg, str(mixed), tmp_path / "mixed")
    files = list_inputs(str(mixed))
    assert summary["images_read"] == len(files) == 3 + len(cases)  # directory.jpg is not a file: not listed
    errors = {os.path.basename(e["source"]): e for e in read_table(tmp_path / "mixed", "errors").to_pylist()}
    expected = {k: v for k, v in cases.items() if v != "ok"}
    assert {k: e["code"] for k, e in errors.items()} == expected
    assert all(len(e["error"]) > 15 and e["stage"] in ("read", "decode") for e in errors.values())
    assert summary["failed_by_reason"] == {c: list(expected.values()).count(c) for c in set(expected.values())}
    processed = {os.path.basename(r["source"]) for r in read_table(tmp_path / "mixed", "images").to_pylist()}
    assert "caf\\xe9_latin1.jpg" in processed and "exif_rotated.jpg" in processed
    mixed_rows, clean_rows = rows_by_source(tmp_path / "mixed"), rows_by_source(tmp_path / "clean")
    for name in clean_rows:  # the same regions as without the bad files (ids differ: other folder)
        assert [r[1:] for r in mixed_rows[name]] == [r[1:] for r in clean_rows[name]]
    assert clean["regions_kept"] == sum(len(v) for v in clean_rows.values()) > 0


def test_regions_match_the_in_process_filter_and_crops_decode(ray_cluster, inputs, tmp_path):
    good, _, _ = inputs
    cfg = config()
    run_filter(cfg, str(good), tmp_path / "out")
    rows = read_table(tmp_path / "out", "regions").to_pylist()
    for name in sorted(os.listdir(good)):
        rgb = decode_png((good / name).read_bytes())
        expect = [(r.x, r.y, r.w, r.h) for r in filter_image(rgb, cfg.filter).regions]
        got = sorted((r["x"], r["y"], r["w"], r["h"]) for r in rows if r["source"].endswith(name))
        assert got == sorted(expect)
    for r in rows:
        crop = decode_png(r["crop"])
        assert crop.shape[:2] == (r["crop_h"], r["crop_w"])
        assert r["config_digest"] == cfg.filter.digest()
    assert pq.read_schema(next((tmp_path / "out" / "regions").glob("*.parquet"))).field("crop").type == "binary"


def test_outputs_summary_config_and_figures(ray_cluster, inputs, tmp_path):
    good, _, _ = inputs
    summary = run_filter(config(), str(good), tmp_path / "o")
    files = {p.name for p in (tmp_path / "o").iterdir()}
    assert {"regions", "rejected.parquet", "errors.parquet", "images.parquet", "summary.json",
            "config.yaml", "contact_sheet.png", "region_stats.png"} <= files
    assert json.loads((tmp_path / "o" / "summary.json").read_text()) == dict(summary.summary)
    assert summary["images_ok"] == 3 and summary["images_failed"] == 0 and summary["images_per_s"] > 0
    assert load_config(tmp_path / "o" / "config.yaml").filter.max_pixels == TEST_MAX_PIXELS
    # one overlay per field (3 < filter.overlays = 6), drawn from the source image with its kept boxes in green
    overlays = sorted((tmp_path / "o" / "overlays").glob("*.png"))
    assert [p.name for p in overlays] == ["00_field_0.png", "01_field_1.png", "02_field_2.png"]
    kept = {os.path.basename(r["source"]) for r in read_table(tmp_path / "o", "regions", ["source"]).to_pylist()}
    for p in overlays:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        img = decode_png(p.read_bytes())
        assert img.shape == (256 + 40, 320, 3)  # the field, not scaled, under a caption strip
        green = ((img[..., 1] > 150) & (img[..., 0] < 60) & (img[..., 2] < 60)).sum()
        assert (green > 100) == (p.name[3:] in kept)


def test_rerun_refuses_and_overwrite_replaces_atomically(ray_cluster, inputs, tmp_path):
    good, _, _ = inputs
    out = tmp_path / "o"
    run_filter(config(), str(good), out)
    first = rows_by_source(out)
    with pytest.raises(OutputExists, match="--overwrite"):
        run_filter(config(), str(good), out)
    (out / "stale.txt").write_text("from an older run")
    run_filter(config(), str(good), out, overwrite=True)
    assert not (out / "stale.txt").exists()
    assert rows_by_source(out) == first  # region ids are stable across runs
    assert [p.name for p in tmp_path.iterdir()] == ["o"]  # no staging or old directories left
    assert len(list((out / "regions").glob("*.parquet"))) >= 1


def test_no_regions_still_writes_readable_tables(ray_cluster, inputs, tmp_path):
    good, _, _ = inputs
    cfg = load_config(overrides=["filter.min_box=5000", "filter.overlays=0"])
    summary = run_filter(cfg, str(good), tmp_path / "o")
    assert summary["regions_kept"] == 0 and not (tmp_path / "o" / "overlays").exists()  # overlays = 0: none
    assert read_table(tmp_path / "o", "regions").num_rows == 0


def test_mlflow_run_records_config_summary_and_figures(ray_cluster, inputs, tmp_path):
    import mlflow

    from activessf.tracking import init_mlflow

    good, _, _ = inputs
    cfg = config()
    init_mlflow(tmp_path / "work", "filter-test")
    summary = run_filter(cfg, str(good), tmp_path / "o")
    run = mlflow.get_run(summary.run_id)
    assert run.data.params["min_box"] == "70" and run.data.params["fill_rate"] == "0.7"
    assert run.data.metrics["regions_kept"] == summary["regions_kept"]
    arts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert {"config.yaml", "summary.json", "contact_sheet.png", "region_stats.png", "overlays"} <= arts
    assert len(mlflow.MlflowClient().list_artifacts(run.info.run_id, "overlays")) == 3


def test_cli_and_job_script_join_the_running_cluster(ray_cluster, inputs, tmp_path, repo, capsys):
    """The CLI in this process (it joins the running Ray), the job script as a process of its own."""
    import ray

    from activessf.cli import main

    good, _, _ = inputs
    base = ["--input", str(good), "--work-dir", str(tmp_path / "w"), "--set", "filter.min_box=60"]
    assert main(["filter", "--out", str(tmp_path / "a"), *base]) == 0
    out = capsys.readouterr().out
    assert "regions kept" in out and "images read      3" in out
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    job = subprocess.run([sys.executable, str(repo / "jobs" / "filter_regions.py"), "--out", str(tmp_path / "b"),
                          *base], env=env, capture_output=True, text=True, timeout=300, cwd=repo)
    assert job.returncode == 0, job.stderr[-3000:]
    assert rows_by_source(tmp_path / "a") == rows_by_source(tmp_path / "b")
    assert main(["filter", "--out", str(tmp_path / "a"), *base]) == 2
    err = capsys.readouterr().err
    assert "--overwrite" in err and "Traceback" not in err


def test_inputs_are_listed_sorted_and_missing_ones_explained(inputs, tmp_path):
    good, _, _ = inputs
    files = list_inputs(str(good))
    assert files == sorted(files) and len(files) == 3 and all(isinstance(f, bytes) for f in files)
    assert len(list_inputs(str(good / "field_*.png"))) == 3
    assert list_inputs(str(good / "field_1.png")) == [os.fsencode(good / "field_1.png")]
    with pytest.raises(FileNotFoundError, match="no such file"):
        list_inputs(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no image files"):
        list_inputs(str(tmp_path / "empty"))
