"""Every `jobs/*.py` script (what `ray job submit` runs) is its `activessf` command: it answers `--help` with
that command's usage and refuses a bad argument with exit code 2, before Ray or any data is touched."""

import contextlib
import io
import runpy
import sys

import pytest

from activessf.cli import COMMANDS

SCRIPTS = {"filter_regions": "filter", "select_samples": "select"}  # the rest are named after their command


def run_script(path, args):
    out, err = io.StringIO(), io.StringIO()
    old_argv, old_path = sys.argv, list(sys.path)
    sys.argv, sys.path[:0] = [str(path), *args], [str(path.parent)]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), pytest.raises(SystemExit) as stop:
            runpy.run_path(str(path), run_name="__main__")
    finally:
        sys.argv, sys.path[:] = old_argv, old_path
    return stop.value.code, out.getvalue(), err.getvalue()


def test_every_job_script_is_its_command(repo):
    scripts = sorted(p for p in (repo / "jobs").glob("*.py") if not p.stem.startswith("_"))
    assert {"predict", "pipeline", "finetune"} <= {p.stem for p in scripts}
    for path in scripts:
        command = SCRIPTS.get(path.stem, path.stem)
        assert command in COMMANDS, f"{path.name}: no command {command!r}"
        code, out, _ = run_script(path, ["--help"])
        assert code == 0 and f"activessf {command}" in out, (path.name, out[:200])
        code, _, err = run_script(path, ["--no-such-option"])
        assert code == 2 and "usage: activessf" in err and "error:" in err, (path.name, err[-200:])
