"""Interrupted work loses nothing: SIGKILL while an output is replaced or a champion promoted, commands
sharing one MLflow store, and an output directory that cannot be written.

Every kill is a real SIGKILL of a real process at a seeded random moment; stores are real sqlite files,
outputs real directories. What the kills hit is printed (``pytest -s``) for docs/reliability.md.
"""

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from activessf.config import load_config
from activessf.stage import check_output, clear_leftovers, exchange, leftover_writer

PY = sys.executable


def hidden(out: Path) -> list[str]:
    """The names beside ``out`` that are leftovers of a write of it."""
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


def dead_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


# ------------------------------------------------------------------ staged outputs under SIGKILL

FILES = 20
# A process that forks writers: each replaces OUT again and again (generation "<writer>:<n>" in every file)
# until it is SIGKILLed after a random delay; then the test looks at OUT before the next writer starts.
WRITER = f"""
import os, random, signal, sys, time
from pathlib import Path
from activessf.stage import staged_output

out, kills, seed = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(seed)

def write(generation):
    with staged_output(out, overwrite=True) as stage:
        (stage / "part").mkdir()
        for k in range({FILES}):
            (stage / "part" / f"{{k}}.txt").write_text(generation)
        (stage / "summary.json").write_text(generation)

write("-1:0")
for writer in range(kills):
    pid = os.fork()
    if pid == 0:
        try:
            n = 0
            while True:
                write(f"{{writer}}:{{n}}")
                n += 1
        finally:
            os._exit(3)
    time.sleep(rng.uniform(0.002, 0.04))
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    print(writer, pid, flush=True)
    sys.stdin.readline()  # the test has looked at OUT
"""


def generation(out: Path) -> tuple[int, int]:
    """The one generation every file of ``out`` holds; fails on a missing file, an extra one or a mix."""
    assert sorted(p.name for p in (out / "part").iterdir()) == sorted(f"{k}.txt" for k in range(FILES))
    found = {(out / "summary.json").read_text()} | {p.read_text() for p in (out / "part").iterdir()}
    assert len(found) == 1, f"a mix of generations in {out}: {sorted(found)}"
    writer, n = found.pop().split(":")
    return int(writer), int(n)


def test_sigkill_while_replacing_an_output_leaves_the_old_or_the_new_one_never_a_mix(tmp_path):
    """30 writers SIGKILLed at seeded random moments while they replace a small directory again and again:
    after each kill OUT is one complete generation, never older than the last one seen; stale staging
    directories are cleared by the next writer."""
    out, kills = tmp_path / "out", 30
    proc = subprocess.Popen([PY, "-c", WRITER, str(out), str(kills), "19"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    seen, landed = (-1, 0), {}
    try:
        for _ in range(kills):
            writer, pid = map(int, proc.stdout.readline().split())
            now = generation(out)  # exactly one complete generation
            assert now >= seen, f"OUT went back from {seen} to {now}"
            ours = [p for p in hidden(out) if leftover_writer(out.parent / p, out)[1] == pid]
            assert len(hidden(out)) <= 2 and len(ours) <= 1, hidden(out)  # the last dead writers' only
            if not ours:
                where = "between two replacements"
            elif ".probe-" in ours[0]:
                where = "checking the output"
            else:  # a staging directory: the new output being written, or (after the swap) the old one removed
                texts = [p.read_text() for p in (out.parent / ours[0]).rglob("*") if p.is_file()]
                there = [tuple(map(int, t.split(":"))) for t in texts if t]  # "": killed while writing that file
                where = ("an empty staging directory" if not there else "removing the previous output"
                         if max(there) < now else "writing the new output")
            landed[where] = landed.get(where, 0) + 1
            seen = now
            proc.stdin.write("\n")
            proc.stdin.flush()
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
    assert seen[0] >= 0  # the writers did replace it
    clear_leftovers(out)  # what the next run does first: the last killed writer's leftovers go
    assert hidden(out) == [] and generation(out) == seen
    print(f"\n{kills} SIGKILLs, OUT always whole; the kills landed: {landed}; last generation {seen}")


REPLACE_ONCE = f"""
import sys
from pathlib import Path
from activessf.stage import staged_output

with staged_output(Path(sys.argv[1]), overwrite=True) as stage:
    (stage / "part").mkdir()
    for k in range({FILES}):
        (stage / "part" / f"{{k}}.txt").write_text(sys.argv[2])
    (stage / "summary.json").write_text(sys.argv[2])
"""
RENAMES = "rename,renameat,renameat2"


@pytest.mark.skipif(not shutil.which("strace"), reason="strace (to land a SIGKILL on a chosen system call) is "
                    "not installed")
def test_a_sigkill_on_each_rename_of_a_replacement_leaves_the_old_or_the_new_output(tmp_path):
    """Random kills rarely hit the microseconds between two renames; strace lands one there: SIGKILL on
    entering the 1st, 2nd... rename-like call (until a run gets through), and on the first removal of the
    previous output after the swap. A replacement by two renames fails here (OUT missing after the 2nd)."""
    out, runs = tmp_path / "out", []
    subprocess.run([PY, "-c", REPLACE_ONCE, str(out), "0:0"], check=True)
    points = [(RENAMES, n) for n in range(1, 4)] + [("unlinkat", 1)]
    for k, (calls, n) in enumerate(points, start=1):
        before = generation(out)
        if calls == RENAMES and runs and runs[-1][2] == 0:
            continue  # the last run got through all its renames
        done = subprocess.run(["strace", "-f", "-qq", "-o", os.devnull, "-e", f"trace={calls}",
                               "-e", f"inject={calls}:signal=SIGKILL:when={n}", PY, "-c", REPLACE_ONCE, str(out),
                               f"{k}:0"], capture_output=True, text=True)
        assert done.returncode in (0, -signal.SIGKILL, 128 + signal.SIGKILL), done.stderr[-2000:]
        now = generation(out)  # whole, and the old or the new one
        assert now in (before, (k, 0)), (calls, n, before, now)
        runs.append(("rename" if calls == RENAMES else calls, n, done.returncode, "new" if now == (k, 0) else "old"))
    assert [r[2] != 0 for r in runs if r[0] == "rename"] == [True, False]  # one rename (the exchange): killed, not
    clear_leftovers(out)
    assert hidden(out) == []
    print("\nSIGKILL on (call, nth) -> exit code, OUT:", runs)


STAGED = {"stages/filter.py": "run_filter", "stages/embed.py": "run_embed", "stages/select.py": "run_select",
          "stages/pretrain.py": "run_pretrain", "stages/finetune.py": "run_finetune", "stages/predict.py": "run_predict",
          "stages/sweep.py": "run_sweep", "ablation.py": "run_ablation", "data/crops.py": "run_crops"}


def test_every_stage_replaces_its_output_through_staged_output():
    """What the kills above prove holds for every stage that writes an output (select's and the others'):
    each opens one ``with staged_output(out, ...)`` for its output (the kills of `activessf filter` below
    stand for them all)."""
    import ast

    import activessf

    root = Path(activessf.__file__).parent
    for module, name in STAGED.items():
        [fn] = [n for n in ast.parse((root / module).read_text()).body if isinstance(n, ast.FunctionDef)
                and n.name == name]
        staged = [item.context_expr for n in ast.walk(fn) if isinstance(n, ast.With) for item in n.items
                  if isinstance(item.context_expr, ast.Call) and getattr(item.context_expr.func, "id", "") ==
                  "staged_output"]
        assert [ast.unparse(c.args[0]) for c in staged] == ["out"], f"{module}: {name} does not write through " \
            "staged_output(out, overwrite)"


def test_leftovers_of_dead_writers_are_cleared_and_a_missing_output_comes_back(tmp_path):
    """The state a kill between the two renames of the fallback (no RENAME_EXCHANGE) leaves: OUT missing,
    its previous output at .OUT.old-*. The next check puts it back and removes a dead writer's staging;
    live writers' leftovers and names it does not know stay."""
    out, host, dead = tmp_path / "out", socket.gethostname(), dead_pid()
    (tmp_path / f".out.old-{dead}@{host}-0000aaaa").mkdir()
    (tmp_path / f".out.old-{dead}@{host}-0000aaaa" / "summary.json").write_text("previous")
    (tmp_path / f".out.staging-{dead}@{host}-0000bbbb").mkdir()  # a killed writer's half-written output
    live = [f".out.staging-{os.getpid()}@{host}-0000cccc", f".out.staging-{dead}@other-host-0000dddd",
            ".out.staging-0000eeee", ".outer.staging-1@x-0000ffff"]  # running here, another host, unknown, another out
    for name in live:
        (tmp_path / name).mkdir()
    with pytest.raises(FileExistsError, match="--overwrite"):  # it is back, so a run without --overwrite stops
        check_output(out, overwrite=False)
    assert (out / "summary.json").read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == sorted(live)

    if sys.platform.startswith("linux"):  # what this machine uses: one exchange, both sides whole
        (tmp_path / "new").mkdir()
        (tmp_path / "new" / "summary.json").write_text("new")
        assert exchange(tmp_path / "new", out)
        assert (out / "summary.json").read_text() == "new"
        assert (tmp_path / "new" / "summary.json").read_text() == "previous"


# ------------------------------------------------------------------ a read-only output directory


@pytest.fixture
def read_only_dir(tmp_path):
    """A directory that even root cannot write: immutable (chattr +i); skipped where that is refused."""
    ro = tmp_path / "ro"
    ro.mkdir()
    made = shutil.which("chattr") and subprocess.run(["chattr", "+i", str(ro)], capture_output=True).returncode == 0
    try:
        if not made:
            pytest.skip("cannot make a directory read-only for this user here (chattr +i refused): "
                        "root ignores permission bits")
        try:
            (ro / "probe").mkdir()
            pytest.skip(f"chattr +i did not stop writes into {ro} on this filesystem")
        except OSError:
            pass
        yield ro
    finally:
        if made:
            subprocess.run(["chattr", "-i", str(ro)], check=True)


def test_an_output_that_cannot_be_written_stops_the_command_before_anything_starts(read_only_dir, tmp_path,
                                                                                  capsys):
    from activessf.cli import main

    smears = tmp_path / "smears"
    smears.mkdir()
    (smears / "field.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    for out in (read_only_dir / "regions", read_only_dir / "a" / "b" / "regions"):
        started = time.monotonic()
        code = main(["filter", "--input", str(smears), "--out", str(out), "--work-dir", str(tmp_path / "w")])
        took = time.monotonic() - started
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1, err
        assert err[0].startswith(f"activessf filter: error: --out {out}: cannot write in {read_only_dir}"), err
        assert took < 5, f"the refusal took {took:.1f} s"
    assert "ray" not in sys.modules or not sys.modules["ray"].is_initialized()  # Ray never started
    assert not (tmp_path / "w").exists() and list(read_only_dir.iterdir()) == []  # no MLflow store, no output


# ------------------------------------------------------------------ several commands on one MLflow store

LOGGER = """
import sys, time
from pathlib import Path
from activessf.config import load_config
from activessf.stage import log_results, stage_run

work, go, who, runs = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
cfg = load_config(overrides=[f"run.work_dir={work}", "run.experiment=shared"])
files = work.parent / who
files.mkdir()
(files / "note.txt").write_text(who)
import mlflow  # imported before the start: every process opens the new store at the same moment
print("ready", flush=True)
while not go.exists():
    time.sleep(0.002)
for i in range(runs):
    with stage_run(cfg, "concurrent", {"who": who, "i": i}, f"{who}-{i}"):
        log_results(files, {"i": i, "loss": 1.0 / (i + 1)}, ["note.txt"])
"""


@pytest.mark.slow  # three processes importing MLflow and one new store: ~12 s
def test_commands_creating_and_writing_one_sqlite_store_at_once_all_get_recorded(tmp_path):
    """Three processes open a store that does not exist yet at the same moment (MLflow's migrations run
    once, under the store lock), then log runs with params, metrics and an artifact at once."""
    import mlflow

    work, go, runs = tmp_path / "work", tmp_path / "go", 5
    procs = {who: subprocess.Popen([PY, "-c", LOGGER, str(work), str(go), who, str(runs)], stdout=subprocess.PIPE,
                                   stderr=open(tmp_path / f"{who}.err", "w"), text=True)
             for who in ("a", "b", "c")}
    try:
        for proc in procs.values():
            assert proc.stdout.readline().strip() == "ready"
        go.touch()
        codes = {who: proc.wait(timeout=120) for who, proc in procs.items()}
    finally:
        for proc in procs.values():
            proc.kill()
    errors = {who: (tmp_path / f"{who}.err").read_text() for who in procs}
    assert codes == {"a": 0, "b": 0, "c": 0}, {who: e[-2000:] for who, e in errors.items()}
    assert not any("database is locked" in e for e in errors.values())
    assert sum("Creating initial MLflow database tables" in e for e in errors.values()) == 1  # one creator

    mlflow.set_tracking_uri(f"sqlite:///{work / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    [exp] = [e for e in client.search_experiments() if e.name == "shared"]
    found = client.search_runs([exp.experiment_id], max_results=100)
    assert sorted(r.info.run_name for r in found) == sorted(f"{w}-{i}" for w in procs for i in range(runs))
    for run in found:
        who, i = run.info.run_name.split("-")
        assert run.data.params == {"who": who, "i": i} and run.data.metrics == {"i": float(i), "loss": 1 / (int(i) + 1)}
        assert run.data.tags["activessf.stage"] == "concurrent" and run.info.status == "FINISHED"
        note = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="note.txt",
                                                   dst_path=str(tmp_path / "dl" / run.info.run_id))
        assert Path(note).read_text() == who


# ------------------------------------------------------------------ a champion promotion under SIGKILL

# Imports once, then forks promoters: each registers and promotes (`register --force`, the library call the
# command makes) again and again, and is SIGKILLed at a random moment once its first registration is done.
# The promoters open the store themselves (nothing is opened before the fork). After each kill the test looks
# at the registry before the next promoter starts.
PROMOTERS = """
import os, random, signal, sys, time
from activessf.config import load_config
from activessf.serving.registry import register
import mlflow, mlflow.artifacts, mlflow.store.tracking.sqlalchemy_store, mlflow.store.model_registry.sqlalchemy_store

ft, kills, seed, overrides = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
rng = random.Random(seed)
for k in range(kills):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            cfg = load_config(overrides=overrides)
            while True:
                os.write(w, (register(ft, cfg, force=True)["version"] + "\\n").encode())
        finally:
            os._exit(3)
    os.close(w)
    reader = os.fdopen(r)
    first = reader.readline().strip()
    delay = rng.uniform(0, 0.3)
    time.sleep(delay)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    done = [first] + reader.read().split()
    reader.close()
    print(f"{delay:.3f}", *done, flush=True)
    sys.stdin.readline()  # the test has looked at the registry
"""


@pytest.mark.slow  # a new store, a logged pyfunc, a process importing MLflow: ~15 s
def test_sigkill_while_promoting_a_champion_leaves_the_alias_on_the_old_or_the_new_version(tmp_path):
    """5 promoters SIGKILLed at random moments: each time the champion is the last promoted version or the
    one being promoted, its evidence reads, and the next registration works."""
    from mlflow import MlflowClient

    from activessf.serving.registry import champion_evidence, register
    from activessf.tracking import init_mlflow
    from test_lineage import finetune_run

    work, kills = tmp_path / "work", 5
    overrides = [f"run.work_dir={work}", "finetune.backbone=test_resnet", "finetune.image_size=32",
                 "register.model_name=cells"]
    cfg = load_config(overrides=overrides)
    init_mlflow(work, cfg.run.experiment)
    finetune_run(cfg, tmp_path / "ft")
    assert register(tmp_path / "ft", cfg)["version"] == "1"
    proc = subprocess.Popen([PY, "-c", PROMOTERS, str(tmp_path / "ft"), str(kills), "19", *overrides],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(tmp_path / "promoters.err", "w"),
                            text=True)
    client, landed = MlflowClient(), []
    try:
        for _ in range(kills):
            line = proc.stdout.readline().split()
            assert line, (tmp_path / "promoters.err").read_text()[-3000:]
            delay, last = float(line[0]), int(line[-1])  # the last version this promoter finished
            champion = int(client.get_model_version_by_alias("cells", "champion").version)
            versions = sorted(int(v.version) for v in client.search_model_versions("name='cells'"))
            assert champion in (last, last + 1), (champion, line)  # old or new, nothing else
            assert versions[:last] == list(range(1, last + 1)) and versions[-1] <= last + 1, versions
            assert champion_evidence(client, "cells", "champion").version == str(champion)  # it reads whole
            landed.append(f"{delay:.2f} s: " + ("after the alias moved" if champion == last + 1 else
                                                "between the new version and the alias" if versions[-1] == last + 1
                                                else "before the new version"))
            proc.stdin.write("\n")
            proc.stdin.flush()
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
    after = register(tmp_path / "ft", cfg, force=True)  # the registry takes the next one
    assert after["promoted"] and str(client.get_model_version_by_alias("cells", "champion").version) == after["version"]
    print(f"\n{kills} promoters SIGKILLed, the champion always the old or the new version; kills landed: {landed}")


# ------------------------------------------------------------------ a real `activessf filter --overwrite` under SIGKILL


def kill_cli(args: list, out: Path, anchor: str, delay: float, tmp_path: Path) -> dict:
    """`activessf ARGS` in a process of its own on the session's Ray and MLflow store (nothing new starts),
    SIGKILLed ``delay`` s after its staging directory beside OUT holds ``anchor``, unless it has finished
    by then. Returns whether it had, and what the staging directory held at the kill."""
    import ray

    from activessf.tracking import store_uri

    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address, "MLFLOW_TRACKING_URI": store_uri(".")}
    err = tmp_path / f"{args[0]}.err"
    proc = subprocess.Popen([str(Path(PY).parent / "activessf"), *args, "--out", str(out), "--overwrite",
                             "--no-progress"], env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=open(err, "w"))
    try:
        staging = []
        while not (staging and (out.parent / staging[0] / anchor).exists()) and proc.poll() is None:
            staging = [p for p in hidden(out) if ".staging-" in p]
            time.sleep(0.005)
        staged = time.monotonic()
        while proc.poll() is None and time.monotonic() - staged < delay:
            time.sleep(0.005)
        finished = proc.poll()
        proc.send_signal(signal.SIGKILL)
        try:  # the staging directory may have gone a moment before the kill (swapped in, old copy removed)
            held = sorted(p.name for p in (out.parent / staging[0]).iterdir()) if staging and finished is None else []
        except FileNotFoundError:
            held = ["(gone: swapped in)"]
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert finished in (None, 0), err.read_text()[-3000:]
    return {"finished": finished == 0, "held": held}


def regions_rows(out: Path) -> list:
    from activessf.regions.records import read_table

    return sorted(tuple(r.values()) for r in read_table(out, "regions").select(["region_id", "x", "y", "w", "h"])
                  .to_pylist())


def check_whole(out: Path, old: Path, new: Path, rows) -> str:
    """OUT is the old output or the complete new one (the same rows and files as ``new``); its leftovers go."""
    got = rows(out)
    assert got in (rows(old), rows(new))
    which = "new" if got == rows(new) else "old"
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in (new if which == "new" else old).iterdir())
    clear_leftovers(out)  # what the next run does first
    assert hidden(out) == []
    return which


@pytest.mark.ray
def test_filter_killed_while_overwriting_leaves_the_old_output_or_the_new_one(ray_cluster, synthetic, tmp_path):
    """`activessf filter --overwrite` SIGKILLed at a random moment of its last steps (after its tables and
    summary are staged: figures, overlays, MLflow artifacts, the swap, removing the old output): OUT reads
    as the previous output or as the complete new one. (A kill earlier leaves the old one: nothing is swapped.)"""
    from activessf.stages.filter import run_filter

    smears, out = synthetic / "smears", tmp_path / "regions"
    run_filter(load_config(overrides=["filter.min_box=40"]), str(smears), out)
    shutil.copytree(out, tmp_path / "old")
    started = time.monotonic()
    run_filter(load_config(overrides=["filter.min_box=60"]), str(smears), tmp_path / "new")  # what the CLI writes
    took = time.monotonic() - started
    assert regions_rows(tmp_path / "old") != regions_rows(tmp_path / "new")
    delay = random.Random(19).uniform(0, took)
    kill = kill_cli(["filter", "--input", str(smears), "--set", "filter.min_box=60"], out, "summary.json", delay,
                    tmp_path)
    which = check_whole(out, tmp_path / "old", tmp_path / "new", regions_rows)
    assert json.loads((out / "summary.json").read_text())["regions_kept"] == len(regions_rows(out))
    print(f"\nfilter SIGKILLed {delay:.2f} s after its staging held summary.json (in-process run: {took:.2f} s), "
          f"{'after it finished' if kill['finished'] else 'the staging holding ' + str(kill['held'])}: OUT is the "
          f"{which} output")


def selection_rows(out: Path) -> list:
    return sorted(tuple(r.values()) for r in pq.read_table(out / "selection").to_pylist())


@pytest.mark.ray
def test_select_killed_while_overwriting_leaves_the_old_output_or_the_new_one(ray_cluster, embedded, tmp_path):
    """`activessf select --overwrite` SIGKILLed at a random moment of its last steps (after its table and
    report are staged): OUT reads as the previous selection or as the complete new one."""
    from activessf.stages.select import run_select

    emb, labelled, out = embedded["emb_regions"], embedded["emb_labelled"], tmp_path / "sel"
    old_cfg, new_cfg = ["prototypes.k=6"], ["prototypes.k=5"]
    run_select(load_config(overrides=old_cfg), emb, out, labelled_embeddings=labelled)
    shutil.copytree(out, tmp_path / "old")
    started = time.monotonic()
    run_select(load_config(overrides=new_cfg), emb, tmp_path / "new", labelled_embeddings=labelled)
    took = time.monotonic() - started
    assert selection_rows(tmp_path / "old") != selection_rows(tmp_path / "new")
    delay = random.Random(20).uniform(0, took)
    kill = kill_cli(["select", "--embeddings", str(emb), "--labelled", str(labelled), "--set", new_cfg[0]], out,
                    "report.json", delay, tmp_path)
    which = check_whole(out, tmp_path / "old", tmp_path / "new", selection_rows)
    print(f"\nselect SIGKILLed {delay:.2f} s after its staging held report.json (in-process run: {took:.2f} s), "
          f"{'after it finished' if kill['finished'] else 'the staging holding ' + str(kill['held'])}: OUT is the "
          f"{which} output")
