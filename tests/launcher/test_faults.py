"""Conformance and fault suite over both executors: kill -9 and Ctrl-C of `ftl sweep` at random instants, a kill
between sbatch and the record, a failing later array, two resumes at once, a killed runner, a runner exiting while
a resume arrives, cancel by name outside ftl, requeue then cancel, holds, a purged job, damaged sweep files,
secrets, SLURM time strings. Invariant everywhere: every trial is queued exactly once per attempt, and a sweep
dir that has queued jobs exists and reads.
"""

import json
import os
import random
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from launcher import manifest as mf
from launcher.local_executor import read_queue
from tests.conftest import REPO, run_ftl, wait_for

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
                 "train.epochs=1", *extra]  # fmt: skip
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
    """{job id: job name} of every job in the controller whose name starts with prefix (array tasks one by one)."""
    out = subprocess.run(["squeue", "-h", "-r", "-o", "%i|%j|%T"], capture_output=True, text=True).stdout
    return {j: n for j, n, s in (line.split("|") for line in out.splitlines()) if n.startswith(prefix)
            and s not in ("COMPLETING", "CANCELLED")}  # fmt: skip


def assert_queued_once(sweep_dir: Path, kind: str) -> mf.Manifest:
    """Every trial submitted, and exactly once in its current attempt; nothing queued that no trial owns."""
    man = mf.read(sweep_dir)
    stuck = [t.id for t in man.trials.values() if t.state in ("NEW", "SUBMITTING", "DEFERRED")]
    assert not stuck, f"{len(stuck)} trials not submitted after resume"
    if kind == "slurm":
        queued = squeue(man.job_name)
        owned = {t.job_id for t in man.trials.values()}
        assert len(queued) == len(man.trials) and set(queued) == owned, (len(queued), len(man.trials))
    else:
        entries, _ = read_queue(sweep_dir)
        pairs = [(e[2], e[3]) for e in entries]
        assert len(pairs) == len(set(pairs)), "a trial was queued twice in one attempt"
        for t in man.trials.values():
            assert (t.id, t.attempt) in set(pairs), f"{t.id} attempt {t.attempt} is not in the queue"
    return man


def cancel_everything(sweep_dir: Path, name_prefix: str, kind: str) -> None:
    if sweep_dir.exists():
        run_ftl("cancel", sweep_dir)
    if kind == "slurm":
        subprocess.run(["scancel", "--name", ",".join(sorted(set(squeue(name_prefix).values())) or ["none"])])


@pytest.fixture(params=["local", "slurm"])
def kind(request):
    if request.param == "slurm":
        request.getfixturevalue("slurm")
    return request.param


# ---------------------------------------------------------------- kills at random instants


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_killed_sweep_leaves_a_dir_that_resume_completes_exactly(kind, sig, tmp_path):
    """`ftl sweep` killed at random instants (kill -9 of the process, or Ctrl-C to its process group): whatever
    was queued is recorded or adopted, `status` reads the dir, `resume` queues exactly the missing trials."""
    rng = random.Random(int(os.environ.get("FTL_FAULT_SEED", "0")))
    n = 2500 if kind == "slurm" else 1500  # several arrays on SLURM (MaxArraySize 1001): a long submission
    data = empty_dataset(tmp_path)
    cluster = cluster_yaml(tmp_path, kind)
    hit = 0
    for i in range(4):
        name = f"k{i}{sig.name[-3:].lower()}"
        out = tmp_path / name
        proc = subprocess.Popen([*FTL, "sweep", str(sweep_yaml(tmp_path, name, n, data)), "--cluster", str(cluster),
                                 "--out", str(out)], cwd=REPO, start_new_session=True, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)  # fmt: skip
        time.sleep(rng.uniform(1.0, 3.0))  # past the imports: most land in the validation or the submission
        os.killpg(proc.pid, sig) if sig == signal.SIGINT else proc.kill()
        stdout, stderr = proc.communicate(timeout=120)
        assert "Traceback" not in stderr, stderr[-3000:]
        try:
            if not out.exists():  # killed before the dir was written: nothing may be queued for it
                assert not squeue(f"ftl-{name}-"), "jobs were queued for a sweep dir that does not exist"
                continue
            hit += 1
            assert run_ftl("status", out, "--limit", "0").returncode == 0
            resumed = run_ftl("resume", out, timeout=300)
            assert resumed.returncode == 0, resumed.stderr
            assert_queued_once(out, kind)
        finally:
            cancel_everything(out, f"ftl-{name}-", kind)
    assert hit, "no kill landed after the sweep dir was written: the instants need moving"


def fake_sbatch(tmp_path: Path, script: str) -> dict[str, str]:
    """A `sbatch` first on PATH that wraps the real one (fault injection at the scheduler's door)."""
    real = subprocess.run(["which", "sbatch"], capture_output=True, text=True).stdout.strip()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    path = bin_dir / "sbatch"
    path.write_text(f"#!/bin/bash\nREAL={real}\nCOUNT={tmp_path}/sbatch_calls\n{script}\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}"}


def test_kill_between_sbatch_and_the_record_is_settled_by_resume(slurm, tmp_path):
    """The job is queued, ftl dies before writing its id (and before submitit placed the job's pickle): status
    shows the trials SUBMITTING; resume cancels the orphan array and queues the trials once."""
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
    status = run_ftl("status", out)
    assert status.returncode == 0 and "20 submitting" in status.stdout
    resumed = run_ftl("resume", out)
    assert resumed.returncode == 0 and "resubmitted 20" in resumed.stdout, resumed.stdout + resumed.stderr
    man = assert_queued_once(out, "slurm")
    assert not set(orphan) & {t.job_id for t in man.trials.values()}
    cancel_everything(out, "ftl-mid-", "slurm")


def test_jobs_queued_but_not_recorded_are_adopted(slurm, tmp_path):
    """ftl died after the array and its pickles were in place but before the job ids were written: the jobs are
    adopted (recorded), none cancelled and none queued again."""
    out = tmp_path / "sw"
    path = sweep_yaml(tmp_path, "adopt", 30, empty_dataset(tmp_path))
    assert run_ftl("sweep", path, "--cluster", cluster_yaml(tmp_path, "slurm"), "--out", out).returncode == 0
    before = {t.id: t.job_id for t in mf.read(out).trials.values()}
    for batch in (out / "state" / "batches").glob("*.json"):  # as if the record step never happened
        batch.write_text(json.dumps({**json.loads(batch.read_text()), "job_ids": None}))
    assert {t.state for t in mf.read(out).trials.values()} == {"SUBMITTING"}
    assert "30 pending" in run_ftl("status", out).stdout
    assert {t.id: t.job_id for t in mf.read(out).trials.values()} == before
    assert "nothing to resume" in run_ftl("resume", out).stdout
    assert_queued_once(out, "slurm")
    cancel_everything(out, "ftl-adopt-", "slurm")


def test_a_failing_later_array_keeps_what_was_queued(slurm, tmp_path):
    """1,100 trials = arrays of 1,001 + 99; sbatch refuses the second: the first stays queued and recorded, the
    error says so in one line, and resume queues exactly the other 99."""
    env = fake_sbatch(tmp_path, 'if [ -f $COUNT ]; then echo "sbatch: error: Batch job submission failed: '
                                'fault injected" >&2; exit 1; fi; touch $COUNT; exec $REAL "$@"')  # fmt: skip
    out = tmp_path / "sw"
    path = sweep_yaml(tmp_path, "later", 1100, empty_dataset(tmp_path))
    proc = run_ftl("sweep", path, "--cluster", cluster_yaml(tmp_path, "slurm"), "--out", out, env=env)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "sbatch failed: Batch job submission failed: fault injected" in lines[0]
    assert "1001 of 1100 trials were queued" in lines[0] and f"ftl resume {out}" in lines[0]
    man = mf.read(out)
    assert sum(t.state == "PENDING" for t in man.trials.values()) == 1001
    assert sum(t.state == "NEW" for t in man.trials.values()) == 99
    assert len(squeue(man.job_name)) == 1001
    resumed = run_ftl("resume", out)
    assert "resubmitted 99" in resumed.stdout, resumed.stdout + resumed.stderr
    assert_queued_once(out, "slurm")
    cancel_everything(out, "ftl-later-", "slurm")


def test_first_batch_refused_leaves_nothing(slurm, tmp_path):
    env = fake_sbatch(tmp_path, 'echo "sbatch: error: Batch job submission failed: Invalid account" >&2; exit 1')
    out = tmp_path / "sw"
    proc = run_ftl("sweep", sweep_yaml(tmp_path, "none", 5, empty_dataset(tmp_path)), "--cluster",
                   cluster_yaml(tmp_path, "slurm"), "--out", out, env=env)  # fmt: skip
    assert proc.returncode == 2 and "sbatch failed: Batch job submission failed: Invalid account" in proc.stderr
    assert not out.exists() and not list(tmp_path.glob(".sw.*"))


# ---------------------------------------------------------------- races


def test_two_resumes_at_once_queue_each_trial_once(kind, tmp_path):
    out = tmp_path / "sw"
    n = 200 if kind == "slurm" else 40
    path = sweep_yaml(tmp_path, "two", n, empty_dataset(tmp_path))
    assert run_ftl("sweep", path, "--cluster", cluster_yaml(tmp_path, kind), "--out", out).returncode == 0
    run_ftl("cancel", out)  # every trial now needs a resume
    procs = [subprocess.Popen([*FTL, "resume", str(out)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]  # fmt: skip
    outputs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    counts = [int(o.split("resubmitted ")[1].split()[0]) if "resubmitted" in o else 0 for o, _ in outputs]
    man = assert_queued_once(out, kind)
    assert sum(counts) == sum(t.attempt == 2 for t in man.trials.values()), (counts, outputs)
    assert all(t.attempt <= 2 for t in man.trials.values())
    cancel_everything(out, "ftl-two-", kind)


def test_killed_runner_is_replaced_and_its_running_trial_adopted(lfw, tmp_path):
    out = tmp_path / "sw"
    extra = (f"data.val_dir={lfw}/val", "train.epochs=4")
    path = sweep_yaml(tmp_path, "runner", 2, lfw / "train", extra)
    assert run_ftl("sweep", path, "--cluster", cluster_yaml(tmp_path, "local"), "--out", out).returncode == 0
    def running() -> list[mf.TrialRecord]:
        jobs = [(t, out / t.run_dir / "local_job.json") for t in mf.read(out).trials.values()]
        return [t for t, p in jobs if p.is_file() and json.loads(p.read_text())["state"] == "RUNNING"]

    first = wait_for(running, 120, "a running trial")[0]
    wait_for(lambda: (out / first.run_dir / "progress.json").is_file(), 120, "its first epoch")
    runner = json.loads((out / "local_runner.json").read_text())["pid"]
    os.kill(runner, signal.SIGKILL)
    time.sleep(1)
    status = run_ftl("status", out)  # notices the dead runner and starts another
    assert status.returncode == 0, status.stderr
    done = run_ftl("wait", out, "--poll", "1", timeout=600)
    assert done.returncode == 0 and "2 completed" in done.stdout, done.stdout + done.stderr
    log = (out / first.run_dir / "train.log").read_text()
    assert log.count("ftl: run dir") == 1  # the adopted trial ran once, to the end
    new_runner = json.loads((out / "local_runner.json").read_text())["pid"]
    assert new_runner != runner


def test_a_resume_while_the_runner_exits_is_run(tmp_path):
    """The runner leaves ~1.5 s after its last trial; resumes that arrive around that moment must still run."""
    out = tmp_path / "sw"
    path = sweep_yaml(tmp_path, "race", 1, empty_dataset(tmp_path))
    assert run_ftl("sweep", path, "--cluster", cluster_yaml(tmp_path, "local"), "--out", out).returncode == 0
    job = out / "trials" / next(iter(mf.read(out).trials)) / "local_job.json"
    for attempt, delay in enumerate([1.2, 1.5, 1.8, 0.3], start=1):
        wait_for(lambda: job.is_file() and json.loads(job.read_text())["state"] not in ("RUNNING",)
                 and json.loads(job.read_text())["attempt"] == attempt, 120, f"attempt {attempt} to end")  # fmt: skip
        time.sleep(delay)
        assert "resubmitted 1" in run_ftl("resume", out).stdout
        wait_for(lambda: json.loads(job.read_text())["attempt"] == attempt + 1, 60, f"attempt {attempt + 1} to start")
    run_ftl("cancel", out)


# ---------------------------------------------------------------- SLURM states from outside ftl


def test_array_cancelled_by_name_outside_ftl(slurm, tmp_path):
    out = tmp_path / "sw"
    path = sweep_yaml(tmp_path, "byname", 6, empty_dataset(tmp_path))
    assert run_ftl("sweep", path, "--cluster", cluster_yaml(tmp_path, "slurm"), "--out", out).returncode == 0
    names = sorted(set(squeue(mf.read(out).job_name).values()))
    subprocess.run(["scancel", "--name", ",".join(names)], check=True)
    done = run_ftl("wait", out, "--poll", "1", "--timeout", "120")
    assert done.returncode == 1 and "6 cancelled" in done.stdout, done.stdout + done.stderr
    assert "resubmitted 6" in run_ftl("resume", out).stdout
    assert_queued_once(out, "slurm")
    cancel_everything(out, "ftl-byname-", "slurm")


def running_trial(tmp_path, lfw, name: str) -> tuple[Path, mf.TrialRecord]:
    """One real trial running on the local cluster (long enough to act on it)."""
    out = tmp_path / name
    path = sweep_yaml(tmp_path, name, 1, lfw / "train", (f"data.val_dir={lfw}/val", "train.epochs=40",
                                                         "train.checkpoint_every_steps=2"))  # fmt: skip
    cluster = cluster_yaml(tmp_path, "slurm", additional_parameters={})
    assert run_ftl("sweep", path, "--cluster", cluster, "--out", out).returncode == 0
    wait_for(lambda: "1 running" in run_ftl("status", out).stdout, 120, "the trial to run")
    return out, next(iter(mf.read(out).trials.values()))


def test_requeue_then_cancel_sticks(slurm, lfw, tmp_path):
    out, trial = running_trial(tmp_path, lfw, "rq")
    subprocess.run(["scontrol", "requeue", trial.job_id], check=True)
    assert "Traceback" not in run_ftl("status", out).stderr
    assert "cancelled 1" in run_ftl("cancel", out).stdout
    for _ in range(4):
        assert "1 cancelled" in run_ftl("status", out).stdout
        time.sleep(1)
    wait_for(lambda: not squeue("ftl-rq-"), 60, "the job to leave the queue")


def test_requeue_hold_is_settled_and_resumed(slurm, lfw, tmp_path):
    out, trial = running_trial(tmp_path, lfw, "rh")
    wait_for(lambda: list((out / trial.run_dir / "checkpoints").glob("step_*/trainer.json")), 120, "a checkpoint")
    subprocess.run(["scontrol", "requeuehold", trial.job_id], check=True)
    done = run_ftl("wait", out, "--poll", "1", "--timeout", "120")
    assert done.returncode == 1 and "1 requeue_hold" in done.stdout, done.stdout + done.stderr
    assert "resubmitted 1" in run_ftl("resume", out).stdout
    wait_for(lambda: "1 running" in run_ftl("status", out).stdout, 120, "the resumed trial to run")
    cancel_everything(out, "ftl-rh-", "slurm")


def test_a_job_purged_from_accounting_is_lost_then_resumed(slurm, tmp_path):
    out = tmp_path / "sw"
    path = sweep_yaml(tmp_path, "purged", 2, empty_dataset(tmp_path))
    assert run_ftl("sweep", path, "--cluster", cluster_yaml(tmp_path, "slurm"), "--out", out).returncode == 0
    victim = next(iter(mf.read(out).trials.values()))
    subprocess.run(["scancel", victim.job_id], check=True)
    state_file = out / "state" / f"{victim.id}.json"  # a job id neither sacct nor squeue knows, submitted long ago
    state_file.write_text(json.dumps({"state": "PENDING", "attempt": 1, "job_ids": ["987654_0"], "token": victim.token,
                                      "index": victim.index, "submitted": time.time() - 3600}))  # fmt: skip
    status = run_ftl("status", out)
    assert "1 lost" in status.stdout and "ftl resume" in status.stdout, status.stdout
    assert "resubmitted 1" in run_ftl("resume", out).stdout
    assert_queued_once(out, "slurm")
    cancel_everything(out, "ftl-purged-", "slurm")


# ---------------------------------------------------------------- damaged files, secrets, time strings


def local_sweep_dir(tmp_path: Path) -> Path:
    """A real (small) sweep dir, its trials cancelled: the object of the damage tests."""
    out = tmp_path / "sw"
    path = sweep_yaml(tmp_path, "dmg", 3, empty_dataset(tmp_path))
    assert run_ftl("sweep", path, "--cluster", cluster_yaml(tmp_path, "local"), "--out", out).returncode == 0
    run_ftl("cancel", out)
    return out


@pytest.mark.parametrize("damage", ["sweep.json garbage", "sweep.json a list", "sweep.json missing keys",
                                    "state garbage", "state wrong types", "state a string", "batch garbage",
                                    "batch wrong types", "no sweep.json"])  # fmt: skip
def test_damaged_sweep_files_are_one_line_errors(tmp_path, damage):
    out = local_sweep_dir(tmp_path)
    target, _, how = damage.partition(" ")
    folder = {"sweep.json": out, "state": out / "state", "batch": out / "state" / "batches"}.get(target, out)
    path = out / "sweep.json" if target == "sweep.json" else next(folder.glob("*.json"), out / "x.json")
    if how == "garbage":
        path.write_bytes(b"\x00\xff{not json")
    elif how == "a list":
        path.write_text("[1, 2, 3]")
    elif how == "missing keys":
        path.write_text(json.dumps({"name": "x"}))
    elif how == "wrong types":
        path.write_text(json.dumps({"attempt": "two", "job_ids": "x", "state": 3}))
    elif how == "a string":
        path.write_text('"PENDING"')
    elif damage == "no sweep.json":
        (out / "sweep.json").unlink()
        (out / "manifest.json").write_text("{}")
    for verb in ("status", "resume", "cancel", "wait", "report"):
        proc = run_ftl(verb, out, *(["--timeout", "5"] if verb == "wait" else []))
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, (verb, proc.stderr)
        assert "damaged" in lines[0] or "not a sweep dir" in lines[0], (verb, lines[0])


def test_secrets_never_reach_a_file(slurm, tmp_path, monkeypatch):
    """A secret-looking env value of the cluster file, and a name in `secrets` taken from the submitting shell, reach
    the job through the environment only: no file of the sweep dir holds them (sbatch scripts included)."""
    token, from_env = "s3cr3t-token-value", "from-the-environment"
    monkeypatch.setenv("FTL_TEST_FROM_ENV", from_env)
    out = tmp_path / "sw"
    cluster = cluster_yaml(tmp_path, "slurm", additional_parameters={}, env={"MY_API_TOKEN": token, "FTL_TEST_FROM_ENV": None},
                           secrets=["FTL_TEST_FROM_ENV"],
                           setup=['echo "lengths ${#MY_API_TOKEN} ${#FTL_TEST_FROM_ENV}"'])  # fmt: skip
    assert run_ftl("sweep", sweep_yaml(tmp_path, "sec", 1, empty_dataset(tmp_path)), "--cluster", cluster, "--out",
                   out).returncode == 0  # fmt: skip
    run_ftl("wait", out, "--poll", "1", timeout=300)
    logs = "".join(p.read_text() for p in out.rglob("*_log.out"))
    assert f"lengths {len(token)} {len(from_env)}" in logs  # the job had both
    for path in (p for p in out.rglob("*") if p.is_file()):
        assert token.encode() not in path.read_bytes() and from_env.encode() not in path.read_bytes(), path
    monkeypatch.delenv("FTL_TEST_FROM_ENV")
    proc = run_ftl("sweep", sweep_yaml(tmp_path, "sec2", 1, empty_dataset(tmp_path)), "--cluster", cluster, "--out",
                   tmp_path / "sw2")  # fmt: skip
    assert proc.returncode == 2 and "FTL_TEST_FROM_ENV must be set in this environment" in proc.stderr
    assert not (tmp_path / "sw2").exists()


def test_slurm_time_strings_are_read_as_slurm_reads_them(slurm, tmp_path):
    for given, minutes in (("1:00:00", 60), ("2-00:00:00", 2880), (90, 90), ("45:30", 46)):
        out = tmp_path / f"t{minutes}"
        cluster = cluster_yaml(tmp_path, "slurm", timeout_min=given)
        raw = cluster.read_text().replace(f"'{given}'", str(given)) if isinstance(given, str) else cluster.read_text()
        cluster.write_text(raw)  # unquoted in the YAML, as people write it (YAML 1.1 reads 1:00:00 as 3600)
        assert run_ftl("sweep", sweep_yaml(tmp_path, f"t{minutes}", 1, empty_dataset(tmp_path)), "--cluster",
                       cluster, "--out", out).returncode == 0  # fmt: skip
        script = next(out.glob("logs/*/*_submission.sh")).read_text()
        assert f"#SBATCH --time={minutes}\n" in script, script
        cancel_everything(out, f"ftl-t{minutes}-", "slurm")
