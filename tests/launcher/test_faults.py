"""Conformance and fault suite over both executors: `ftl sweep` killed (kill -9, Ctrl-C) at each named step of a
submission (core/faults.py: after an intent, after sbatch, on a later array), a kill between sbatch and submitit's
pickles, a failing later array, two resumes at once (with flock working or not), a killed runner, a runner exiting
while a resume arrives, cancel by name outside ftl, requeue then cancel, holds, a purged job, damaged sweep files,
secrets, SLURM time strings. Invariant everywhere: every trial is queued exactly once per attempt, and a sweep dir
that has queued jobs exists and reads.
"""

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from launcher import event_log
from launcher import manifest as mf
from tests.conftest import REPO, SLURM_GROUP, TINY, fault, ftl, wait_for

pytestmark = pytest.mark.slow
FTL = [sys.executable, "-m", "launcher.cli"]


def empty_dataset(tmp_path: Path) -> Path:
    """Class folders without images: passes every check before submission, fails in a second when run."""
    for cls in ("a", "b"):
        (tmp_path / "empty_data" / cls).mkdir(parents=True, exist_ok=True)
    return tmp_path / "empty_data"


def sweep_yaml(tmp_path: Path, name: str, n: int, data: Path, extra: tuple = ()) -> Path:
    path = tmp_path / f"{name}.yaml"
    overrides = [f"data.train_dir={data}", "data.image_size=32", "data.batch_size=8", "data.num_workers=0",
                 "train.epochs=1", *TINY, *extra]  # fmt: skip
    path.write_text(yaml.safe_dump({"recipe": "base", "name": name, "overrides": overrides,
                                    "grid": {"train.seed": list(range(n))}}, sort_keys=False))  # fmt: skip
    return path


def cluster_yaml(tmp_path: Path, kind: str, **kw) -> Path:
    if kind == "local":
        data = {"name": "here", "executor": "local", "max_parallel": 1, "env": {"OMP_NUM_THREADS": "1"}}
    else:
        data = yaml.safe_load((REPO / "cluster_configs" / "slurm_local.yaml").read_text())
        data["additional_parameters"] = {"begin": "now+7days"}  # queued (PENDING, not held), never run: these tests are about the queue
    path = tmp_path / f"cluster-{kind}-{len(kw)}.yaml"
    path.write_text(yaml.safe_dump({**data, **kw}))
    return path


def squeue(prefix: str) -> dict[str, str]:
    """{job id: job name} of every job in the controller whose name starts with prefix (array tasks one by one); a
    controller too busy to answer is asked again, not read as an empty queue."""
    for _ in range(20):
        proc = subprocess.run(["squeue", "-h", "-r", "-o", "%i|%j|%T"], capture_output=True, text=True)
        if proc.returncode == 0:
            break
        time.sleep(0.5)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    return {j: n for j, n, s in (line.split("|") for line in out.splitlines()) if n.startswith(prefix)
            and s not in ("COMPLETING", "CANCELLED")}  # fmt: skip


def queued_pairs(sweep_dir: Path) -> list[tuple[str, int]]:
    """(trial, attempt) of every batch the log records with job ids: what reached the scheduler."""
    events, _, _ = event_log.read(sweep_dir, *event_log.read_head(sweep_dir)[1:])
    return [(t, a) for _, e in events if e["e"] == "batch" and e["job_ids"] is not None for t, a in e["trials"]]


def assert_queued_once(sweep_dir: Path, kind: str) -> mf.Manifest:
    """Every trial submitted, and exactly once in its current attempt; nothing queued that no trial owns."""
    man = mf.read(sweep_dir)
    stuck = [t.id for t in man.trials.values() if t.state in ("NEW", "SUBMITTING", "DEFERRED")]
    assert not stuck, f"{len(stuck)} trials not submitted after resume"
    pairs = queued_pairs(sweep_dir)
    recorded = {(t.id, t.attempt) for t in man.trials.values()}
    if kind == "slurm":
        queued = squeue(man.job_name)
        owned = {t.job_id for t in man.trials.values()}
        assert len(queued) == len(man.trials) and set(queued) == owned, (len(queued), len(man.trials))
    else:
        assert len(pairs) == len(set(pairs)), "a trial was queued twice in one attempt"
        assert recorded <= set(pairs), "a trial's attempt is not in the queue"
    return man


def cancel_everything(sweep_dir: Path, name_prefix: str, kind: str) -> None:
    if sweep_dir.exists():
        ftl("cancel", sweep_dir)
    if kind == "slurm":
        for name in sorted(set(squeue(name_prefix).values())):
            subprocess.run(["scancel", "--name", name])


@pytest.fixture(params=["local", pytest.param("slurm", marks=SLURM_GROUP)])
def kind(request):
    if request.param == "slurm":
        request.getfixturevalue("slurm")
    return request.param


# ---------------------------------------------------------------- kills at each step of a submission


KILLS = {"local": ["after-intent", "after-sbatch", "after-intent:int"],
         "slurm": ["after-intent@2", "after-sbatch", "after-sbatch@3", "after-intent@2:int"]}  # fmt: skip


@pytest.mark.parametrize(("kind", "point"), [pytest.param(k, p, marks=[SLURM_GROUP] * (k == "slurm"))
                                             for k, ps in KILLS.items() for p in ps], indirect=["kind"])
def test_a_sweep_killed_at_each_step_of_its_submission_resumes_exactly(kind, point, tmp_path):
    """`ftl sweep` stopped by kill -9 (or Ctrl-C: `:int`) at a named step - an intent written, sbatch returned,
    on the second or third of three arrays (MaxArraySize 101 in the test cluster): what was queued is recorded
    or adopted (the same job ids, none cancelled), `status` reads the dir, `resume` queues exactly the rest."""
    name = f"k{abs(hash(point)) % 10000}"
    out = tmp_path / name
    n = 250 if kind == "slurm" else 20
    proc = subprocess.run([*FTL, "sweep", str(sweep_yaml(tmp_path, name, n, empty_dataset(tmp_path))), "--cluster",
                           str(cluster_yaml(tmp_path, kind)), "--out", str(out)], cwd=REPO, capture_output=True,
                          text=True, env={**os.environ, **fault(point)}, timeout=300)  # fmt: skip
    try:
        assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
        if point.endswith(":int"):
            assert proc.returncode == 130 and "what was queued is recorded" in proc.stderr, proc.stderr
        else:
            assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stderr[-2000:])
        before = {t.id: t.job_id for t in mf.read(out).trials.values() if t.job_id}
        assert ftl("status", out, "--limit", "0").returncode == 0
        resumed = ftl("resume", out)
        assert resumed.returncode == 0, resumed.stderr
        man = assert_queued_once(out, kind)
        after = {t.id: t.job_id for t in man.trials.values()}
        assert all(after[i] == j for i, j in before.items()), "a recorded job was queued again"
        if kind == "slurm" and point.startswith("after-sbatch"):  # adopted, not cancelled and queued afresh
            assert len(before) < n and sum(t.attempt == 1 for t in man.trials.values()) == n
    finally:
        cancel_everything(out, f"ftl-{name}-", kind)


def fake_sbatch(tmp_path: Path, script: str) -> dict[str, str]:
    """A `sbatch` first on PATH that wraps the real one (fault injection at the scheduler's door)."""
    real = subprocess.run(["which", "sbatch"], capture_output=True, text=True).stdout.strip()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    path = bin_dir / "sbatch"
    # ftl's `sbatch --test-only` check (nothing queued) goes to the real one: the faults are at the submissions
    path.write_text(f"#!/bin/bash\nREAL={real}\nCOUNT={tmp_path}/sbatch_calls\n"
                    f'[ "$1" = --test-only ] && exec $REAL "$@"\n{script}\n')  # fmt: skip
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}"}


@SLURM_GROUP
def test_kill_between_sbatch_and_the_record_is_settled_by_resume(slurm, tmp_path):
    """The job is queued, ftl dies before writing its id and before submitit placed the job's pickle (inside
    sbatch's return): status shows the trials SUBMITTING; resume cancels the orphan array and queues them once."""
    env = fake_sbatch(tmp_path, 'out=$($REAL "$@") || exit $?; echo "$out"; touch $COUNT; sleep 30')
    out = tmp_path / "sw"
    args = [*FTL, "sweep", str(sweep_yaml(tmp_path, "mid", 20, empty_dataset(tmp_path))), "--cluster",
            str(cluster_yaml(tmp_path, "slurm")), "--out", str(out)]  # fmt: skip
    proc = subprocess.Popen(args, cwd=REPO, env={**os.environ, **env}, start_new_session=True)
    wait_for(lambda: (tmp_path / "sbatch_calls").exists(), 60, "sbatch to queue the array")
    orphan = wait_for(lambda: squeue("ftl-mid-"), 30, "the array in the queue")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    man = mf.read(out)
    assert {t.state for t in man.trials.values()} == {"SUBMITTING"}
    status = ftl("status", out)
    assert status.returncode == 0 and "20 submitting" in status.stdout
    resumed = ftl("resume", out)
    assert resumed.returncode == 0 and "resubmitted 20" in resumed.stdout, resumed.stdout + resumed.stderr
    man = assert_queued_once(out, "slurm")
    assert not set(orphan) & {t.job_id for t in man.trials.values()}
    cancel_everything(out, "ftl-mid-", "slurm")


@SLURM_GROUP
def test_jobs_queued_but_not_recorded_are_adopted(slurm, tmp_path):
    """ftl died after the array and its pickles were in place but before the job ids were appended: the jobs are
    adopted (recorded), none cancelled and none queued again."""
    out = tmp_path / "sw"
    path = sweep_yaml(tmp_path, "adopt", 30, empty_dataset(tmp_path))
    assert ftl("sweep", path, "--cluster", cluster_yaml(tmp_path, "slurm"), "--out", out).returncode == 0
    before = {t.id: t.job_id for t in mf.read(out).trials.values()}
    log = out / event_log.LOG
    kept = [line for line in log.read_text().splitlines(keepends=True)
            if not ('"e":"batch"' in line and '"job_ids":null' not in line)]  # as if the record step never happened
    log.write_text("".join(kept))
    assert {t.state for t in mf.read(out).trials.values()} == {"SUBMITTING"}
    assert "30 pending" in ftl("status", out).stdout
    assert {t.id: t.job_id for t in mf.read(out).trials.values()} == before
    assert "nothing to resume" in ftl("resume", out).stdout
    assert_queued_once(out, "slurm")
    cancel_everything(out, "ftl-adopt-", "slurm")


@SLURM_GROUP
def test_a_failing_later_array_keeps_what_was_queued(slurm, tmp_path):
    """250 trials = arrays of 101 + 101 + 48; sbatch refuses the second: the first stays queued and recorded, the
    error says so in one line, and resume queues exactly the other 149."""
    env = fake_sbatch(tmp_path, 'if [ -f $COUNT ]; then echo "sbatch: error: Batch job submission failed: '
                                'fault injected" >&2; exit 1; fi; touch $COUNT; exec $REAL "$@"')  # fmt: skip
    out = tmp_path / "sw"
    path = sweep_yaml(tmp_path, "later", 250, empty_dataset(tmp_path))
    proc = ftl("sweep", path, "--cluster", cluster_yaml(tmp_path, "slurm"), "--out", out, env=env)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "sbatch failed: Batch job submission failed: fault injected" in lines[0]
    assert "101 of 250 trials were queued" in lines[0] and f"ftl resume {out}" in lines[0]
    man = mf.read(out)
    assert sum(t.state == "PENDING" for t in man.trials.values()) == 101
    assert sum(t.state == "NEW" for t in man.trials.values()) == 149
    assert len(squeue(man.job_name)) == 101
    resumed = ftl("resume", out)
    assert "resubmitted 149" in resumed.stdout, resumed.stdout + resumed.stderr
    assert_queued_once(out, "slurm")
    cancel_everything(out, "ftl-later-", "slurm")


@SLURM_GROUP
def test_first_batch_refused_leaves_nothing(slurm, tmp_path):
    env = fake_sbatch(tmp_path, 'echo "sbatch: error: Batch job submission failed: Invalid account" >&2; exit 1')
    out = tmp_path / "sw"
    proc = ftl("sweep", sweep_yaml(tmp_path, "none", 5, empty_dataset(tmp_path)), "--cluster",
               cluster_yaml(tmp_path, "slurm"), "--out", out, env=env)  # fmt: skip
    assert proc.returncode == 2 and "sbatch failed: Batch job submission failed: Invalid account" in proc.stderr
    assert not out.exists() and not list(tmp_path.glob(".sw.*"))


# ---------------------------------------------------------------- races


NO_FLOCK = "import fcntl\nfcntl.flock = lambda *a, **k: None  # two nodes whose flocks do not see each other\n"


@pytest.mark.parametrize("flock", ["works", "node-local"])
def test_two_resumes_at_once_queue_each_trial_once(kind, flock, tmp_path):
    """Two `ftl resume` at the same instant - on one node, or on two login nodes whose flock does not reach each
    other (NFSv3 without lockd, Lustre `localflock`: simulated by an flock that does nothing in both processes)."""
    out = tmp_path / "sw"
    n = 150 if kind == "slurm" else 30
    path = sweep_yaml(tmp_path, "two", n, empty_dataset(tmp_path))
    assert ftl("sweep", path, "--cluster", cluster_yaml(tmp_path, kind), "--out", out).returncode == 0
    ftl("cancel", out)  # every trial now needs a resume
    env = dict(os.environ)
    if flock == "node-local":
        (tmp_path / "site").mkdir()
        (tmp_path / "site" / "sitecustomize.py").write_text(NO_FLOCK)
        env["PYTHONPATH"] = f"{tmp_path / 'site'}:{env.get('PYTHONPATH', '')}"
    procs = [subprocess.Popen([*FTL, "resume", str(out)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env) for _ in range(2)]  # fmt: skip
    outputs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    counts = [int(o.split("resubmitted ")[1].split()[0]) if "resubmitted" in o else 0 for o, _ in outputs]
    man = assert_queued_once(out, kind)
    assert sum(counts) == sum(t.attempt == 2 for t in man.trials.values()) == n, (counts, outputs)
    assert all(t.attempt <= 2 for t in man.trials.values())
    cancel_everything(out, "ftl-two-", kind)


def test_killed_runner_is_replaced_and_its_running_trial_adopted(lfw, tmp_path):
    out = tmp_path / "sw"
    extra = (f"data.val_dir={lfw}/val", "train.epochs=8")
    path = sweep_yaml(tmp_path, "runner", 2, lfw / "train", extra)
    assert ftl("sweep", path, "--cluster", cluster_yaml(tmp_path, "local"), "--out", out).returncode == 0

    def running() -> list[mf.TrialRecord]:
        jobs = [(t, out / t.run_dir / "local_job.json") for t in mf.read(out).trials.values()]
        return [t for t, p in jobs if p.is_file() and json.loads(p.read_text())["state"] == "RUNNING"]

    first = wait_for(running, 120, "a running trial")[0]
    wait_for(lambda: (out / first.run_dir / "progress.json").is_file(), 120, "its first steps")
    runner = json.loads((out / "local_runner.json").read_text())["pid"]
    os.kill(runner, signal.SIGKILL)
    time.sleep(1)
    status = ftl("status", out)  # notices the dead runner and starts another
    assert status.returncode == 0, status.stderr
    done = ftl("wait", out, "--poll", "0.5")
    assert done.returncode == 0 and "2 completed" in done.stdout, done.stdout + done.stderr
    log = (out / first.run_dir / "train.log").read_text()
    assert log.count("ftl: run dir") == 1  # the adopted trial ran once, to the end
    assert json.loads((out / "local_runner.json").read_text())["pid"] != runner


@pytest.mark.parametrize("point", ["runner-idle", "runner-unlocked"])
def test_a_resume_while_the_runner_exits_is_run(tmp_path, point):
    """The runner decides to leave (idle) just as a resume arrives: stopped at that named point - before its
    last look under the sweep lock, or after it released its runner lock - while `ftl resume` queues the trial
    again, then let go: the new attempt runs (by this runner, or by the one the resume started)."""
    out = tmp_path / "sw"
    path = sweep_yaml(tmp_path, "race", 1, empty_dataset(tmp_path))
    assert ftl("sweep", path, "--cluster", cluster_yaml(tmp_path, "local"), "--out", out, env=fault(f"{point}:stop")).returncode == 0
    job = out / "trials" / next(iter(mf.read(out).trials)) / "local_job.json"
    runner = json.loads(wait_for(lambda: (out / "local_runner.json").is_file() and (out / "local_runner.json").read_text(),
                                 30, "the runner"))  # fmt: skip
    wait_for(lambda: job.is_file() and json.loads(job.read_text())["state"] == "FAILED", 120, "attempt 1 to fail")
    wait_for(lambda: open(f"/proc/{runner['pid']}/stat").read().split(") ")[1][0] == "T", 30, "the runner to stop there")
    resumed = ftl("resume", out, env={"FTL_FAULT": None})
    assert "resubmitted 1" in resumed.stdout, resumed.stdout + resumed.stderr
    os.kill(runner["pid"], signal.SIGCONT)
    wait_for(lambda: json.loads(job.read_text())["attempt"] == 2, 60, "attempt 2 to start")
    ftl("cancel", out)


# ---------------------------------------------------------------- SLURM states from outside ftl


@SLURM_GROUP
def test_array_cancelled_by_name_outside_ftl(slurm, tmp_path):
    out = tmp_path / "sw"
    path = sweep_yaml(tmp_path, "byname", 6, empty_dataset(tmp_path))
    assert ftl("sweep", path, "--cluster", cluster_yaml(tmp_path, "slurm"), "--out", out).returncode == 0
    for name in sorted(set(squeue(mf.read(out).job_name).values())):
        subprocess.run(["scancel", "--name", name], check=True)
    done = ftl("wait", out, "--poll", "0.5", "--timeout", "120")
    assert done.returncode == 1 and "6 cancelled" in done.stdout, done.stdout + done.stderr
    assert "resubmitted 6" in ftl("resume", out).stdout
    assert_queued_once(out, "slurm")
    cancel_everything(out, "ftl-byname-", "slurm")


def running_trial(tmp_path, lfw, name: str) -> tuple[Path, mf.TrialRecord]:
    """One real trial running on the local cluster (long enough to act on it)."""
    out = tmp_path / name
    path = sweep_yaml(tmp_path, name, 1, lfw / "train", (f"data.val_dir={lfw}/val", "train.epochs=60",
                                                         "train.checkpoint_every_steps=2"))  # fmt: skip
    cluster = cluster_yaml(tmp_path, "slurm", additional_parameters={})
    assert ftl("sweep", path, "--cluster", cluster, "--out", out).returncode == 0
    wait_for(lambda: "1 running" in ftl("status", out).stdout, 120, "the trial to run")
    return out, next(iter(mf.read(out).trials.values()))


@SLURM_GROUP
def test_requeue_then_cancel_sticks(slurm, lfw, tmp_path):
    out, trial = running_trial(tmp_path, lfw, "rq")
    subprocess.run(["scontrol", "requeue", trial.job_id], check=True)
    assert "Traceback" not in ftl("status", out).stderr
    assert "cancelled 1" in ftl("cancel", out).stdout
    for _ in range(4):
        assert ftl("status", out).stdout.count(" cancel") >= 1  # cancelling, then cancelled: never anything else
        assert "1 cancel" in ftl("status", out).stdout
        time.sleep(0.5)
    wait_for(lambda: not squeue("ftl-rq-"), 60, "the job to leave the queue")


@SLURM_GROUP
def test_requeue_hold_is_settled_and_resumed(slurm, lfw, tmp_path):
    out, trial = running_trial(tmp_path, lfw, "rh")
    wait_for(lambda: list((out / trial.run_dir / "checkpoints").glob("step_*/trainer.json")), 120, "a checkpoint")
    subprocess.run(["scontrol", "requeuehold", trial.job_id], check=True)
    done = ftl("wait", out, "--poll", "0.5", "--timeout", "120")
    assert done.returncode == 1 and "1 requeue_hold" in done.stdout, done.stdout + done.stderr
    assert "resubmitted 1" in ftl("resume", out).stdout
    wait_for(lambda: "1 running" in ftl("status", out).stdout, 120, "the resumed trial to run")
    cancel_everything(out, "ftl-rh-", "slurm")


@SLURM_GROUP
def test_a_job_purged_from_accounting_is_lost_then_resumed(slurm, tmp_path):
    out = tmp_path / "sw"
    path = sweep_yaml(tmp_path, "purged", 2, empty_dataset(tmp_path))
    assert ftl("sweep", path, "--cluster", cluster_yaml(tmp_path, "slurm"), "--out", out).returncode == 0
    victim = next(iter(mf.read(out).trials.values()))
    subprocess.run(["scancel", victim.job_id], check=True)
    with mf.locked(out) as man:  # a job id neither sacct nor squeue knows, submitted long ago
        man.update(man.trials[victim.id], job_ids=["987654_0"], submitted=time.time() - 3600, state="PENDING")
    status = ftl("status", out)
    assert "1 lost" in status.stdout and "ftl resume" in status.stdout, status.stdout
    assert "resubmitted 1" in ftl("resume", out).stdout
    assert_queued_once(out, "slurm")
    cancel_everything(out, "ftl-purged-", "slurm")


# ---------------------------------------------------------------- damaged files, secrets, time strings


@pytest.fixture(scope="module")
def cancelled_sweep(tmp_path_factory) -> Path:
    """A real (small) sweep dir, its trials cancelled: each damage test damages its own copy."""
    tmp = tmp_path_factory.mktemp("dmg")
    out = tmp / "sw"
    assert ftl("sweep", sweep_yaml(tmp, "dmg", 3, empty_dataset(tmp)), "--cluster", cluster_yaml(tmp, "local"),
               "--out", out).returncode == 0  # fmt: skip
    ftl("cancel", out)
    return out


@pytest.mark.parametrize("damage", ["sweep.json garbage", "sweep.json a list", "sweep.json missing keys",
                                    "sweep.json search a string", "log empty", "log no header", "log garbage line",
                                    "log foreign event", "no sweep.json"])  # fmt: skip
def test_damaged_sweep_files_are_one_line_errors(cancelled_sweep, tmp_path, damage):
    out = tmp_path / "sw"
    shutil_copytree(cancelled_sweep, out)
    target, _, how = damage.partition(" ")
    sweep, log = out / "sweep.json", out / event_log.LOG
    if damage == "sweep.json garbage":
        sweep.write_bytes(b"\x00\xff{not json")
    elif damage == "sweep.json a list":
        sweep.write_text("[1, 2, 3]")
    elif damage == "sweep.json missing keys":
        sweep.write_text(json.dumps({"name": "x"}))
    elif damage == "sweep.json search a string":
        sweep.write_text(json.dumps({**json.loads(sweep.read_text()), "search": "tpe"}))
    elif damage == "log empty":
        log.write_bytes(b"")  # a crash right after the file was made, before its first line reached the disk
    elif damage == "log no header":
        log.write_text("\n".join(log.read_text().splitlines()[1:]) + "\n")
    elif damage == "log garbage line":
        log.write_bytes(log.read_bytes() + b"\x00\x00\x00\x00\n")
    elif damage == "log foreign event":
        log.write_text(log.read_text() + json.dumps({"e": "state", "id": "not-a-trial", "state": "RUNNING"}) + "\n")
    elif damage == "no sweep.json":
        sweep.unlink()
    for verb in ("status", "resume", "cancel", "wait", "report", "sync"):
        proc = ftl(verb, out, *(["--timeout", "5"] if verb == "wait" else []))
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, (verb, proc.stderr)
        assert "damaged" in lines[0] or "not a sweep dir" in lines[0], (verb, lines[0])
        assert str(out) in lines[0], (verb, lines[0])


def shutil_copytree(src: Path, dst: Path) -> None:
    import shutil

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("sweep.lock", ".local_runner.lock"))


@SLURM_GROUP
def test_secrets_never_reach_a_file(slurm, tmp_path, monkeypatch):
    """A secret-looking env value of the cluster file, and a name in `secrets` taken from the submitting shell, reach
    the job through the environment only: no file of the sweep dir holds them (sbatch scripts included)."""
    token, from_env = "s3cr3t-token-value", "from-the-environment"
    monkeypatch.setenv("FTL_TEST_FROM_ENV", from_env)
    out = tmp_path / "sw"
    cluster = cluster_yaml(tmp_path, "slurm", additional_parameters={}, env={"MY_API_TOKEN": token, "FTL_TEST_FROM_ENV": None},
                           secrets=["FTL_TEST_FROM_ENV"],
                           setup=['echo "lengths ${#MY_API_TOKEN} ${#FTL_TEST_FROM_ENV}"'])  # fmt: skip
    assert ftl("sweep", sweep_yaml(tmp_path, "sec", 1, empty_dataset(tmp_path)), "--cluster", cluster, "--out",
               out).returncode == 0  # fmt: skip
    ftl("wait", out, "--poll", "0.5")
    logs = "".join(p.read_text() for p in out.rglob("*_log.out"))
    assert f"lengths {len(token)} {len(from_env)}" in logs  # the job had both
    for path in (p for p in out.rglob("*") if p.is_file()):
        assert token.encode() not in path.read_bytes() and from_env.encode() not in path.read_bytes(), path
    monkeypatch.delenv("FTL_TEST_FROM_ENV")
    proc = ftl("sweep", sweep_yaml(tmp_path, "sec2", 1, empty_dataset(tmp_path)), "--cluster", cluster, "--out",
               tmp_path / "sw2")  # fmt: skip
    assert proc.returncode == 2 and "FTL_TEST_FROM_ENV must be set in this environment" in proc.stderr
    assert not (tmp_path / "sw2").exists()


@SLURM_GROUP
def test_slurm_time_strings_are_read_as_slurm_reads_them(slurm, tmp_path):
    for given, minutes in (("1:00:00", 60), ("2-00:00:00", 2880), (90, 90), ("45:30", 46)):
        out = tmp_path / f"t{minutes}"
        cluster = cluster_yaml(tmp_path, "slurm", timeout_min=given)
        raw = cluster.read_text().replace(f"'{given}'", str(given)) if isinstance(given, str) else cluster.read_text()
        cluster.write_text(raw)  # unquoted in the YAML, as people write it (YAML 1.1 reads 1:00:00 as 3600)
        assert ftl("sweep", sweep_yaml(tmp_path, f"t{minutes}", 1, empty_dataset(tmp_path)), "--cluster",
                   cluster, "--out", out).returncode == 0  # fmt: skip
        script = next(out.glob("logs/*/*_submission.sh")).read_text()
        assert f"#SBATCH --time={minutes}\n" in script, script
        cancel_everything(out, f"ftl-t{minutes}-", "slurm")


def test_a_signal_handed_to_another_thread_is_held_too():
    """Ctrl-C is process-directed: with a helper thread alive (filelock's heartbeat), the kernel may hand it to that
    thread, past the submitting thread's mask. It is still held until the submission is recorded, then raised."""
    import signal
    import threading

    from launcher.executors import signals_held

    stop = threading.Event()
    helper = threading.Thread(target=stop.wait, daemon=True)
    helper.start()
    done = []
    try:
        with pytest.raises(KeyboardInterrupt):
            with signals_held():
                signal.pthread_kill(helper.ident, signal.SIGINT)  # what the kernel may do with a Ctrl-C
                time.sleep(0.3)  # the helper runs the C handler; then bytecodes on which Python would raise it
                for _ in range(10_000):
                    pass
                done.append("recorded")
    finally:
        stop.set()
    assert done == ["recorded"]
