"""fusedopt under torch.distributed on CPU (gloo, 2 processes): FSDP2, DTensor, DDP, against single-process
torch.optim. The scenarios live in dist_worker.py and run in one launch of both ranks (see its docstring); each
test here reports one scenario's outcome on every rank, and one more that every rank exited cleanly."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

import dist_worker

pytestmark = [pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                                 reason="this torch build has no torch.distributed with the gloo backend"),
              # One xdist worker takes every test here (make test runs pytest -n with --dist loadgroup): the
              # module-scoped launch then runs once, not once per worker.
              pytest.mark.xdist_group("distributed")]

# Process start and imports take ~5 s per launch; the scenarios a few seconds; a hung collective ends at the
# process group's 60 s timeout.
LAUNCH_TIMEOUT_S = 240


@pytest.fixture(scope="module")
def launch(tmp_path_factory) -> tuple[subprocess.CompletedProcess, list[dict[str, str]]]:
    out = tmp_path_factory.mktemp("dist")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))), os.environ.get("PYTHONPATH")])), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, dist_worker.__file__, str(out)], env=env, capture_output=True,
                          text=True, timeout=LAUNCH_TIMEOUT_S)
    per_rank = []
    for rank in range(dist_worker.WORLD):
        path = out / f"rank{rank}.json"
        assert path.exists(), f"rank {rank} wrote no results (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
        per_rank.append(json.loads(path.read_text()))
    return proc, per_rank


@pytest.fixture(scope="module")
def results(launch) -> list[dict[str, str]]:
    return launch[1]


def test_every_rank_exits_cleanly(launch):
    """The results are written before teardown: a rank that aborts on its way out (e.g. "terminate called without
    an active exception" from a gloo thread at interpreter shutdown) shows only in the exit status."""
    proc = launch[0]
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.mark.parametrize("scenario", [s.__name__ for s in dist_worker.SCENARIOS])
def test_scenario(results, scenario):
    for rank, outcome in enumerate(results):
        assert scenario in outcome, f"rank {rank} did not run {scenario}"
        assert outcome[scenario] == "ok", f"rank {rank}, {scenario}:\n{outcome[scenario]}"
