"""Smoke tests of examples/train_gpt.py on a tiny config: single process (in this process) and under torchrun
with 2 CPU ranks (DDP and FSDP2, gloo). The two runs of the example (torch.optim.AdamW and fusedopt.AdamW,
both clipped, same data) must agree on the losses step by step."""
from __future__ import annotations

import importlib.util
import math
import os
import pathlib
import subprocess
import sys

import pytest
import torch

from helpers import require_backend

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "train_gpt.py"
TINY = ["--steps", "4", "--width", "32", "--layers", "1", "--heads", "2", "--context", "16", "--batch-size", "4",
        "--corpus-chars", "3000", "--threads", "1"]


def _load_example():
    spec = importlib.util.spec_from_file_location("train_gpt", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def threads_restored():
    """The example sets torch's thread count (--threads): put back for the tests after it in this process."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_train_gpt_single_process(tmp_path, threads_restored):
    require_backend("cpu")
    plot = tmp_path / "curves.png"
    history = _load_example().main(TINY + ["--device", "cpu", "--plot", str(plot)])
    losses = {name: h["loss"] for name, h in history.items()}
    assert set(losses) == {"torch.optim.AdamW", "fusedopt.AdamW"}
    torch_loss, fused_loss = losses["torch.optim.AdamW"], losses["fusedopt.AdamW"]
    assert len(torch_loss) == len(fused_loss) == 4
    assert all(math.isclose(a, b, rel_tol=1e-4) for a, b in zip(torch_loss, fused_loss)), losses
    assert fused_loss[-1] < fused_loss[0], "the loss must fall over 4 steps at this learning rate"
    assert all(t > 0 for h in history.values() for t in h["step_ms"])
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_corpus_is_deterministic():
    example = _load_example()
    assert example.make_corpus(500, seed=3) == example.make_corpus(500, seed=3)
    assert example.make_corpus(500, seed=3) != example.make_corpus(500, seed=4)


@pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                    reason="this torch build has no torch.distributed with the gloo backend")
@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_train_gpt_torchrun_two_ranks(tmp_path, mode):
    require_backend("cpu")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(SCRIPT),
           *TINY, "--device", "cpu", "--plot", str(tmp_path / "curves.png")] + (["--fsdp"] if mode == "fsdp" else [])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    expected = "FSDP2" if mode == "fsdp" else "DDP"
    assert f"x 2 ({expected})" in proc.stdout, proc.stdout
    final = [line.split() for line in proc.stdout.splitlines() if "final loss" in line]
    assert len(final) == 2, proc.stdout
    torch_final, fused_final = (float(words[3]) for words in final)
    assert math.isclose(torch_final, fused_final, rel_tol=1e-4), proc.stdout
    assert (tmp_path / "curves.png").exists()
