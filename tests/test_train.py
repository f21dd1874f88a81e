"""The trainer never loses work: kill -9 at random moments and resume gives bit-identical
results; Ctrl-C saves; 2-process DDP runs; resuming with a config that does not fit is refused."""
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from difflab import checkpoint as ckpt
from difflab.config import load_config
from difflab.errors import UserError
from difflab.train import train

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}  # same thread count everywhere


def difflab(*args, check=True, **kw):
    r = subprocess.run([sys.executable, "-m", "difflab", *args], capture_output=True, text=True, env=ENV, **kw)
    if check and r.returncode != 0:
        raise AssertionError(f"difflab {' '.join(args)} failed ({r.returncode}):\n{r.stderr[-2000:]}")
    return r


TRAIN = ["train", "--data", "toy:moons", "--steps", "300", "--checkpoint-every", "20", "--seed", "3",
         "--batch-size", "256", "--quiet"]


@pytest.mark.slow
def test_kill_minus_nine_and_resume_is_bit_identical(tmp_path):
    ref = tmp_path / "ref"
    difflab(*TRAIN, "--out", str(ref))
    run = tmp_path / "run"
    rng = random.Random(0)
    targets = sorted(rng.sample(range(30, 290), 3))  # kill once the run has passed these steps
    kills, steps_seen = 0, []
    args = [sys.executable, "-m", "difflab", *TRAIN, "--out", str(run)]
    log = run / "log.jsonl"
    for attempt, target in enumerate(targets + [None]):
        p = subprocess.Popen(args + (["--resume"] if attempt else []), env=ENV,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if target is None:
            assert p.wait(timeout=600) == 0
            break
        deadline = time.time() + 300
        while p.poll() is None and time.time() < deadline:
            lines = log.read_text().splitlines() if log.exists() else []
            if lines and lines[-1].endswith("}") and json.loads(lines[-1])["step"] >= target:
                time.sleep(rng.uniform(0, 0.3))  # somewhere inside a later step or checkpoint write
                break
            time.sleep(0.02)
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            kills += 1
        p.wait()
        steps_seen.append(ckpt.load(run)[1]["step"] if (run / ckpt.CHECKPOINT_NAME).exists() else 0)
    assert kills == 3, "the test must actually interrupt the run"
    assert all(0 < s < 300 for s in steps_seen), steps_seen  # killed mid-run, after some checkpoint
    a, b = load_file(str(ref / ckpt.CHECKPOINT_NAME)), load_file(str(run / ckpt.CHECKPOINT_NAME))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    sa, sb = tmp_path / "a.npz", tmp_path / "b.npz"
    for r, s in [(ref, sa), (run, sb)]:
        difflab("sample", "--checkpoint", str(r), "--n", "200", "--seed", "5", "--out", str(s), "--nfe", "50",
                "--quiet")
    assert np.array_equal(np.load(sa)["samples"], np.load(sb)["samples"])
    # the log was cut back on each resume: one record per logged step, in order
    steps = [int(line.split('"step": ')[1].split(",")[0]) for line in (run / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(10, 301, 10))


def test_resume_in_process_equals_uninterrupted(tmp_path):
    cfg = load_config("toy", overrides={"steps": 40, "checkpoint_every": 15, "batch_size": 64, "seed": 1})
    train(cfg, tmp_path / "ref", progress=False)
    part = load_config("toy", overrides={"steps": 40, "checkpoint_every": 15, "batch_size": 64, "seed": 1})
    calls = {"n": 0}

    def stop_after_a_while():
        calls["n"] += 1
        return calls["n"] > 23  # stop at step 23, between checkpoints (saves on stop)
    train(part, tmp_path / "run", progress=False, stop_flag=stop_after_a_while)
    assert ckpt.load(tmp_path / "run")[1]["step"] == 23
    train(load_config("toy"), tmp_path / "run", resume=True, progress=False, overrides={"steps": 40})
    a = load_file(str(tmp_path / "ref" / ckpt.CHECKPOINT_NAME))
    b = load_file(str(tmp_path / "run" / ckpt.CHECKPOINT_NAME))
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_with_a_config_that_does_not_fit_is_refused(tmp_path):
    cfg = load_config("toy", overrides={"steps": 5, "batch_size": 32})
    train(cfg, tmp_path / "run", progress=False)
    before = (tmp_path / "run" / ckpt.CHECKPOINT_NAME).read_bytes()
    with pytest.raises(UserError, match="does not fit"):
        train(load_config("toy"), tmp_path / "run", resume=True, progress=False, overrides={"steps": 10, "lr": 0.5})
    with pytest.raises(UserError, match="already holds"):
        train(load_config("toy", overrides={"steps": 10}), tmp_path / "run", progress=False)
    assert (tmp_path / "run" / ckpt.CHECKPOINT_NAME).read_bytes() == before


def test_non_finite_steps_are_skipped_then_stop_with_a_clear_message(tmp_path):
    cfg = load_config("toy", overrides={"steps": 50, "batch_size": 32, "lr": 1e30, "warmup": 1, "max_bad_steps": 3})
    with pytest.raises(UserError, match="diverged"):
        train(cfg, tmp_path / "run", progress=False)


def test_sigint_saves_a_checkpoint(tmp_path):
    run = tmp_path / "run"
    p = subprocess.Popen([sys.executable, "-m", "difflab", "train", "--data", "toy:moons", "--steps", "100000",
                          "--checkpoint-every", "100000", "--out", str(run), "--quiet"], env=ENV,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (run / "log.jsonl").exists() and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    meta = ckpt.load(run)[1]
    assert meta["reason"] == "interrupted" and meta["step"] > 0
    assert "--resume" in err


@pytest.mark.slow
def test_two_process_ddp_on_cpu(tmp_path):
    run = tmp_path / "ddp"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
                        "-m", "difflab", "train", "--data", "toy:moons", "--steps", "30", "--batch-size", "64",
                        "--checkpoint-every", "10", "--out", str(run), "--quiet"],
                       capture_output=True, text=True, env={**ENV, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    meta = ckpt.load(run)[1]
    assert meta["step"] == 30
    # rank 0 alone wrote the log and the checkpoint: one record per logged step
    assert len((run / "log.jsonl").read_text().splitlines()) == 3
    t = load_file(str(run / ckpt.CHECKPOINT_NAME))
    assert any(k.startswith("opt.") for k in t)
    assert all(torch.isfinite(v).all() for k, v in t.items() if v.is_floating_point())
