"""The command line takes what people type: options anywhere, --debug and --version anywhere, Hydra's comma lists
and +key, errors that blame the override that caused them, suggestions for the names other tools use, and Ctrl-C
in `ftl train` that checkpoints and says how to resume."""

import os
import re
import signal
import subprocess
import sys
import time

import pytest
import yaml

from launcher.cli import parse
from tests.conftest import REPO, ftl, lfw_overrides, run_ftl


def one_line_error(proc, pattern: str) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert re.search(pattern, lines[0]), lines[0]
    return lines[0]


@pytest.mark.parametrize("argv", [
    ["train", "demo", "--run-dir", "X", "optim.lr=1e-3"],
    ["train", "--run-dir", "X", "demo", "optim.lr=1e-3"],
    ["train", "demo", "optim.lr=1e-3", "--run-dir", "X"],
    ["--debug", "train", "demo", "optim.lr=1e-3", "--run-dir", "X"],
    ["train", "demo", "optim.lr=1e-3", "--debug", "--run-dir=X"],
])  # fmt: skip
def test_options_anywhere_among_the_overrides(argv):
    args = parse(argv)
    assert args.verb == "train" and args.run_dir == "X" and args.overrides == ["demo", "optim.lr=1e-3"]
    assert args.debug == ("--debug" in argv)


def test_sweep_and_data_verbs_take_options_anywhere():
    args = parse(["sweep", "demo", "--dry-run", "train.epochs=1", "--cluster", "local", "optim.lr=1e-3,3e-3"])
    assert args.dry_run and args.cluster == "local" and args.overrides == ["train.epochs=1", "optim.lr=1e-3,3e-3"]
    args = parse(["data", "convert", "--mode", "raw", "some/dir", "--out", "x.beton"])
    assert args.src == "some/dir" and args.mode == "raw" and args.out == "x.beton"


def test_version_and_debug_anywhere():
    proc = run_ftl("--version")
    assert proc.returncode == 0 and re.fullmatch(r"ftl \d+\.\d+\.\d+\n", proc.stdout)
    assert run_ftl("status", "--version").stdout == proc.stdout
    debug = run_ftl("train", "base", "optim.lrr=1", "--debug")
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_errors_blame_the_override_and_suggest_other_tools_names(tmp_path):
    one_line_error(ftl("train", "base", "data.train_dir=/tmp", "train.epochs=abc"),
                   r"command line train.epochs=abc: Value 'abc'")  # fmt: skip
    one_line_error(ftl("train", "base", "data.train_dir=/tmp", "train.seed=-2"),
                   r"command line: train.seed=-2 must be >= 0")  # fmt: skip
    one_line_error(ftl("train", "base", "optim.learning_rate=1e-3"), r"did you mean: optim.lr")
    one_line_error(ftl("train", "base", "train.num_epochs=3"), r"did you mean: train.epochs")
    one_line_error(ftl("train", "base", "data.bs=3"), r"did you mean: data.batch_size")
    one_line_error(ftl("train", "base", "data.train_dir=/tmp", "optim.lr=1e-3,3e-3"),
                   r"lists several values: sweep them with `ftl sweep`")  # fmt: skip
    one_line_error(ftl("train", "base", "~optim.lr"), r"~KEY \(delete a key\) does not apply")


def test_hydra_comma_lists_are_grid_axes_and_plus_keys_are_read(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"recipe": "base", "overrides": [f"data.train_dir={tmp_path}"],
                                    "grid": {"finetune.strategy": ["full", "gradual"]}}))  # fmt: skip
    proc = ftl("sweep", path, "optim.lr=1e-3,3e-3", "+train.epochs=2", "--dry-run")
    assert proc.returncode == 0 and "4 trials" in proc.stdout, proc.stdout + proc.stderr
    assert "optim.lr=0.003" in proc.stdout and "finetune.strategy=gradual" in proc.stdout


@pytest.mark.slow
def test_ctrl_c_in_train_checkpoints_and_prints_the_resume_command(lfw, tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "launcher.cli", "train", "base", *lfw_overrides(lfw, **{
        "train.epochs": 40, "data.batch_size": 4, "train.log_every_steps": 1}), "--run-dir", str(run)]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    deadline = time.time() + 180
    while time.time() < deadline and not (run / "progress.json").is_file():
        time.sleep(0.3)
    proc.send_signal(signal.SIGINT)  # what a terminal's Ctrl-C sends
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 130 and "Traceback" not in err, err[-2000:]  # 128 + SIGINT, as for a second Ctrl-C
    assert f"continue it with: ftl train resume={run}" in out, out[-2000:]
    assert "saving a checkpoint at the next update" in err
    assert list((run / "checkpoints").glob("step_*/trainer.json"))
    # resumed, then Ctrl-C twice: stopped at once, exit 130 again, and still told how to continue
    proc = subprocess.Popen([sys.executable, "-m", "launcher.cli", "train", f"resume={run}"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    start = (run / "progress.json").stat().st_mtime
    while time.time() < deadline + 180 and (run / "progress.json").stat().st_mtime == start:
        time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.05)  # the second while the first is still asking for a checkpoint
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 130 and "Traceback" not in err, err[-2000:]
    assert f"ftl train resume={run}" in out, out[-2000:]


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_gpu_loader_without_a_gpu_is_one_line(lfw, tmp_path):
    proc = run_ftl("train", "base", *lfw_overrides(lfw), "data.loader=gpu", "data.resize=crop", "--run-dir", tmp_path / "r")
    one_line_error(proc, r"data.loader=gpu decodes JPEGs on a CUDA GPU, and this run has none; use data.loader=auto")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("thread", [False, True])
def test_quick_exit_runs_atexit_flushes_and_keeps_the_code_or_waits_for_a_live_thread(tmp_path, thread):
    """`ftl train` leaves with os._exit (skipping ~1.5 s of torch teardown): atexit handlers still run, unflushed
    output still arrives, the exit code is kept; a live non-daemon thread makes it a normal exit that waits."""
    script = f"""
import atexit, sys, threading, time
from launcher.cli import exit_quickly
atexit.register(lambda: open({str(tmp_path / "atexit")!r}, "w").write("ran"))
if {thread}:
    threading.Thread(target=lambda: (time.sleep(0.5), open({str(tmp_path / "thread")!r}, "w").write("done"))).start()
sys.stdout.write("no newline, not flushed")
exit_quickly(3)
sys.exit(4)
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.stdout == "no newline, not flushed" and (tmp_path / "atexit").read_text() == "ran"
    assert proc.returncode == (4 if thread else 3)
    assert (tmp_path / "thread").is_file() == thread


def test_status_wait_and_report_without_a_dir_take_the_newest_sweep(tmp_path, monkeypatch, capsys):
    from launcher.cli import main
    from tests.launcher.test_report import fake_sweep

    monkeypatch.chdir(tmp_path)
    assert main(["status"]) == 2 and "no sweep dir given and none under" in capsys.readouterr().err
    old, new = fake_sweep(tmp_path / "sweeps" / "a-1", name="old"), fake_sweep(tmp_path / "sweeps" / "b-2", name="new")
    os.utime(new / "sweep.json", (2e9, 2e9))
    assert main(["status"]) == 0
    out = capsys.readouterr()
    assert "the newest sweep: sweeps/b-2" in out.err and "b2" in out.out, out
    assert main(["report"]) == 0 and (new / "report.html").exists() and not (old / "report.html").exists()
    assert "the newest sweep: sweeps/b-2" in capsys.readouterr().err
    assert main(["status", str(old)]) == 0 and "newest" not in capsys.readouterr().err


def test_print_config_shows_the_resolved_recipe_and_trains_nothing(tmp_path):
    proc = ftl("train", "demo", "optim.lr=0.002", "--print-config", "--run-dir", tmp_path / "r")
    cfg = yaml.safe_load(proc.stdout)
    assert proc.returncode == 0 and cfg["optim"]["lr"] == 0.002 and cfg["train"]["epochs"] >= 1, proc.stderr
    assert not (tmp_path / "r").exists()
    one_line_error(ftl("train", "demo", "optim.lrr=1", "--print-config"), r"did you mean: optim.lr")


@pytest.mark.parametrize("argv", [
    ["data", "prepare", "fashion-mnist", "--out", "X", "--per-class", "0"],
    ["data", "convert", "fashion-mnist", "--workers", "0"],
    ["augment-preview", "demo", "--samples", "0"],
    ["status", "--limit", "-1"],
    ["resume", "sw", "--max-attempts", "zero"],
])  # fmt: skip
def test_counts_below_one_are_refused_before_anything_runs(argv):
    proc = ftl(*argv)
    assert proc.returncode == 2 and "expected a whole number >=" in proc.stderr and "Traceback" not in proc.stderr


def test_a_path_that_cannot_be_written_is_one_line(tmp_path):
    """`ftl report --out` under a file (and any path the OS refuses) was a traceback: one line naming it."""
    from tests.launcher.test_report import fake_sweep

    sweep = fake_sweep(tmp_path / "sw")
    (tmp_path / "file").write_text("x")
    one_line_error(ftl("report", sweep, "--out", tmp_path / "file" / "r.html"), r"/file\S*: (File exists|Not a dir)")
    assert not list(tmp_path.glob("file*/**/*.html"))
