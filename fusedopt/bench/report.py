"""From timings to numbers people read: flat rows (also the JSON), a table, a verdict, the environment."""
from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any, Sequence

import torch

from .impls import ADAMW_HYPERPARAMS, BASELINE
from .roofline import ROOFLINE, gbps, roofline_fraction
from .runner import CaseResult
from .timing import median, paired_speedup

FUSEDOPT = "fusedopt.AdamW(cpu)"
FOREACH = "clip+isfinite+AdamW(foreach)"
UNCLIPPED = "AdamW(fused), no clip/check"
# Params of the full-job rows should agree after the run: all start equal and take the same steps. An AdamW step
# moves a param by about lr at most, so allow 1e-3 of that per step. Adam barely sees the clip coefficient except
# where |g * clip_coef| is near eps, which is where this catches a wrong one; torch's own fp32 global norm is off
# by ~1e-3 relative on GPT-2 small, which moves those params by ~2e-4 lr per step.
PARAM_TOLERANCE_PER_STEP = 1e-3
# Below this triad median/best ratio the run is called noisy in the verdict.
NOISY_TRIAD = 0.8
# Above this share of all CPUs taken by other processes during the rounds the run is called busy.
BUSY_SHARE = 0.05


def summarize(result: CaseResult) -> list[dict[str, Any]]:
    """One flat dict per implementation; None where a row was skipped or a number does not apply."""
    case = result.case
    probes: dict[str, Any] = {}
    for p in result.probes.values():
        probes[f"{p.name}_best_gbps"] = gbps(p.nbytes, min(p.times))
        probes[f"{p.name}_median_gbps"] = gbps(p.nbytes, median(p.times))
    baseline = next((r for r in result.rows if r.impl.name == BASELINE and r.times), None)
    param_bytes = case.n_params * case.dtype.itemsize
    out = []
    for row in result.rows:
        d: dict[str, Any] = dict(
            case=case.name, impl=row.impl.name, n_params=case.n_params, n_tensors=case.n_tensors,
            bytes_per_param=row.impl.bytes_per_param, rounds=len(row.times), skipped=row.skipped, **probes,
            median_s=None, best_s=None, gbps_median=None, gbps_best=None, roofline_fraction=None,
            axpy_fraction=None, speedup_vs_baseline=None, peak_extra_bytes=row.peak_extra_bytes,
            peak_extra_fraction=None, max_abs_diff_vs_baseline=row.max_abs_diff, steps=row.steps,
            others_cpu_share=result.others_cpu_share, times_s=list(row.times))
        if row.times:
            nbytes = row.impl.bytes_per_param * case.n_params
            best = min(row.times)
            d.update(median_s=median(row.times), best_s=best, gbps_median=gbps(nbytes, median(row.times)),
                     gbps_best=gbps(nbytes, best),
                     roofline_fraction=roofline_fraction(nbytes, best, probes[f"{ROOFLINE}_best_gbps"]),
                     axpy_fraction=roofline_fraction(nbytes, best, probes["axpy_best_gbps"]))
            if baseline is not None:
                d["speedup_vs_baseline"] = paired_speedup(baseline.times, row.times)
        if row.peak_extra_bytes is not None:
            d["peak_extra_fraction"] = row.peak_extra_bytes / param_bytes
        out.append(d)
    return out


def _num(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def _mib(nbytes: int | None, fraction: float | None) -> str:
    return "-" if nbytes is None else f"{nbytes / 2**20:,.1f} MiB ({fraction:.0%})"


COLUMNS = ("implementation", "B/p", "median ms", "best ms", "best GB/s", "of triad", "of axpy", "speedup",
           "peak extra mem", "max|dp|")


def _cells(d: dict[str, Any]) -> tuple[str, ...]:
    ms = lambda s: _num(s * 1e3, ".1f")  # noqa: E731
    speedup = d["speedup_vs_baseline"]
    return (d["impl"], str(d["bytes_per_param"]), ms(d["median_s"]), ms(d["best_s"]), _num(d["gbps_best"], ".1f"),
            _num(d["roofline_fraction"], ".2f"), _num(d["axpy_fraction"], ".2f"),
            "-" if speedup is None else f"{speedup:.2f}x", _mib(d["peak_extra_bytes"], d["peak_extra_fraction"]),
            _num(d["max_abs_diff_vs_baseline"], ".1e"))


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """Rows of one case. GB/s and the roofline fractions use each row's best time and B/p (its floor of bytes per
    param); speedup is the median of per-round ratios against the baseline; peak extra memory is also given as a
    share of the param bytes. Skipped rows follow."""
    d = rows[0]
    head = (f"{d['case']}: {d['n_tensors']} tensors, {d['n_params']:,} params. Roofline: triad "
            f"{d['triad_best_gbps']:.1f} GB/s best ({d['triad_median_gbps']:.1f} median); in-place axpy "
            f"{d['axpy_best_gbps']:.1f} GB/s best ({d['axpy_median_gbps']:.1f} median)")
    if d["others_cpu_share"] is not None:
        head += f". Other processes took {d['others_cpu_share']:.0%} of the CPUs during the rounds"
    body = [COLUMNS] + [_cells(d) for d in rows if d["skipped"] is None]
    widths = [max(len(r[i]) for r in body) for i in range(len(COLUMNS))]
    lines = [head] + ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                      for r in body]
    return "\n".join(lines + [f"skipped {d['impl']}: {d['skipped']}" for d in rows if d["skipped"] is not None])


def _by_impl(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["impl"]: d for d in rows}


def _case_verdict(rows: Sequence[dict[str, Any]]) -> str:
    rows_by = _by_impl(rows)
    base, ours, foreach, unclipped = (rows_by.get(k) for k in (BASELINE, FUSEDOPT, FOREACH, UNCLIPPED))
    name = rows[0]["case"]
    if base is None or base["median_s"] is None:
        return f"On {name} the baseline {BASELINE} did not run, so there is nothing to compare against."
    if ours is None or ours["median_s"] is None:
        why = "skipped, reason above" if ours is not None else "not selected"
        full = [d for d in rows if d["bytes_per_param"] == base["bytes_per_param"] and d["median_s"] is not None]
        best = min(full, key=lambda d: d["median_s"])
        return (f"On {name} fusedopt did not run ({why}); the fastest torch way to do the full job is {best['impl']} "
                f"at {best['roofline_fraction']:.2f} of the triad roofline.")
    text = (f"On {name}, fusedopt.AdamW's clipped, checked step is {ours['speedup_vs_baseline']:.2f}x as fast as "
            f"clip_grad_norm_ + isfinite + AdamW(fused=True) ({ours['median_s'] * 1e3:.1f} vs "
            f"{base['median_s'] * 1e3:.1f} ms median) and reaches {ours['roofline_fraction']:.2f} of the triad "
            f"roofline ({ours['axpy_fraction']:.2f} of in-place axpy) against the baseline's "
            f"{base['roofline_fraction']:.2f} ({base['axpy_fraction']:.2f})")
    if unclipped is not None and unclipped["median_s"] is not None:
        ratio = ours["median_s"] / unclipped["median_s"]
        text += f"; it takes {ratio:.2f}x the median time of torch's fused update alone, with no clip or check"
    if ours["peak_extra_bytes"] is not None and foreach is not None and foreach["peak_extra_bytes"] is not None:
        text += (f"; it allocates {ours['peak_extra_fraction']:.1%} of the param bytes during a step, torch's "
                 f"foreach path {foreach['peak_extra_fraction']:.0%}")
    return text + "."


def param_tolerance(steps: int) -> float:
    return PARAM_TOLERANCE_PER_STEP * ADAMW_HYPERPARAMS["lr"] * steps


def verdict(rows: Sequence[dict[str, Any]]) -> str:
    """One paragraph over all cases, with warnings that change how far the numbers can be trusted."""
    cases = list(dict.fromkeys(d["case"] for d in rows))
    parts = [_case_verdict([d for d in rows if d["case"] == c]) for c in cases]
    for d in rows:
        diff, tol = d["max_abs_diff_vs_baseline"], param_tolerance(d["steps"])
        if diff is not None and diff > tol:
            parts.append(f"Warning: on {d['case']}, {d['impl']} ended {diff:.1e} away from the baseline's params "
                         f"(tolerance {tol:.1e}), so its time may not be that of a correct step.")
    shares = [d["others_cpu_share"] for d in rows if d["others_cpu_share"] is not None]
    if shares and max(shares) > BUSY_SHARE:
        parts.append(f"Other processes used up to {max(shares):.0%} of the CPUs during the timed rounds; they stall "
                     f"torch's per-tensor parallel loops far more than long passes, so rerun on a quiet machine.")
    noisy = {c: d["triad_median_gbps"] / d["triad_best_gbps"] for c in cases for d in rows if d["case"] == c}
    worst = min(noisy.values()) if noisy else 1.0
    if worst < NOISY_TRIAD:
        parts.append(f"Memory bandwidth was noisy (triad median down to {worst:.0%} of its best), so trust the "
                     f"paired speedups more than absolute times.")
    return " ".join(parts)


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=Path(__file__).resolve().parent, capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def environment() -> dict[str, Any]:
    status = _git("status", "--porcelain")
    try:
        import fusedopt
        fusedopt_version = getattr(fusedopt, "__version__", "unknown")
    except Exception as exc:  # the package is optional here; its absence is recorded, not fatal
        fusedopt_version = f"unavailable: {type(exc).__name__}: {exc}"
    return dict(
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        torch=torch.__version__, fusedopt=fusedopt_version, python=platform.python_version(),
        platform=platform.platform(), processor=platform.processor() or platform.machine(),
        cpu_count=os.cpu_count(), torch_threads=torch.get_num_threads(), loadavg=list(os.getloadavg()),
        git_sha=_git("rev-parse", "HEAD"), git_dirty=None if status is None else bool(status))


def write_json(path: str | os.PathLike, env: dict[str, Any], config: dict[str, Any],
               rows: Sequence[dict[str, Any]]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(dict(env=env, config=config, rows=list(rows)), indent=1) + "\n")
