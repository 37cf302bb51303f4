"""From timings to numbers people read: flat rows (also the JSON), tables, the verdict, the environment, and the
comparison of two saved runs."""
from __future__ import annotations

import datetime
import json
import math
import os
import platform
import re
import subprocess
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

from .impls import CLIP_SUFFIX, OPTIMS, NoKernel
from .roofline import gbps, roofline_fraction
from .runner import GroupResult
from .timing import median, paired_speedup, percentile

SCHEMA = 2
# Below this probe median/best ratio the run is called noisy in the verdict.
NOISY_PROBE = 0.8
# Above this share of all CPUs taken by other processes during the rounds the run is called busy.
BUSY_SHARE = 0.05
# A row reaches the bandwidth-bound regime, for the verdict's sweep sentence, at this fraction of the roofline.
BANDWIDTH_BOUND = 0.5

ROW_KEYS = (
    "suite", "case", "case_description", "scale", "optim", "impl", "family", "variant", "job", "device", "dtype",
    "n_params", "n_tensors", "status", "reason", "bytes_per_param", "bytes_per_step", "samples", "repeat",
    "median_s", "p20_s", "p80_s", "best_s", "gbps", "roofline_probe", "roofline_gbps", "roofline_best_gbps",
    "roofline_fraction", "launches", "syncs", "peak_extra_bytes", "peak_extra_fraction", "torch_best",
    "speedup_vs_torch_best", "check_error", "steps", "others_cpu_share", "times_s",
)


def summarize(result: GroupResult) -> list[dict[str, Any]]:
    """One flat dict per implementation (keys: ROW_KEYS); None where a number does not apply or was not measured.

    Time is per step; GB/s and the roofline fraction use the median step time, the bytes the row's job must move
    at least (`bytes_per_param`, from the algorithm and dtypes) and the median rate of the roofline probe timed in
    the same rounds. The speedup is the median over rounds of (torch's best row's time / this row's time), torch's
    best being the torch row of the same job with the lowest median."""
    case = result.case
    probe = result.probes.get(result.roofline)
    roof = gbps(probe.nbytes, median(probe.times)) if probe and probe.times else None
    roof_best = gbps(probe.nbytes, min(probe.times)) if probe and probe.times else None
    timed = [r for r in result.rows if r.times]
    best_torch = {}
    for job in {r.impl.job for r in result.rows}:
        torch_rows = [r for r in timed if r.impl.family == "torch" and r.impl.job == job]
        if torch_rows:
            best_torch[job] = min(torch_rows, key=lambda r: median(r.times))
    param_bytes = case.n_params * case.dtype.itemsize
    out = []
    for row in result.rows:
        impl = row.impl
        bpp = impl.bytes_per_param(case.dtype)
        status = ("wrong" if row.wrong else "skipped" if row.skipped else "untimed" if row.untimed
                  else "ok" if row.times else "skipped")
        d: dict[str, Any] = dict.fromkeys(ROW_KEYS)
        d.update(
            suite=case.suite, case=case.name, case_description=case.description, scale=case.scale,
            optim=result.optim, impl=impl.name, family=impl.family, variant=impl.variant, job=impl.job,
            device=result.device, dtype=str(case.dtype).removeprefix("torch."), n_params=case.n_params,
            n_tensors=case.n_tensors, status=status, reason=row.wrong or row.skipped or row.untimed,
            bytes_per_param=bpp,
            bytes_per_step=bpp * case.n_params, samples=len(row.times), repeat=row.repeat,
            roofline_probe=result.roofline, roofline_gbps=roof, roofline_best_gbps=roof_best,
            launches=row.launches, syncs=row.syncs, peak_extra_bytes=row.peak_extra_bytes,
            check_error=row.check_error, steps=row.steps, others_cpu_share=result.others_cpu_share,
            times_s=list(row.times))
        if row.times:
            med = median(row.times)
            d.update(median_s=med, p20_s=percentile(row.times, 20), p80_s=percentile(row.times, 80),
                     best_s=min(row.times), gbps=gbps(d["bytes_per_step"], med))
            if roof:
                d["roofline_fraction"] = roofline_fraction(d["bytes_per_step"], med, roof)
            best = best_torch.get(impl.job)
            if best is not None:
                d["torch_best"] = best.impl.name
                d["speedup_vs_torch_best"] = paired_speedup(best.times, row.times)
        if row.peak_extra_bytes is not None and param_bytes:
            d["peak_extra_fraction"] = row.peak_extra_bytes / param_bytes
        out.append(d)
    return out


# --- formatting ------------------------------------------------------------------------------------------------

def fmt_time(s: float | None) -> str:
    if s is None:
        return "-"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if s >= scale:
            return f"{s / scale:.3g} {unit}"
    return f"{s / 1e-9:.3g} ns"


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    if n == 0:
        return "0"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} B"


def fmt_params(n: int) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return str(n)


def _num(x: float | None, fmt: str, suffix: str = "") -> str:
    return "-" if x is None else format(x, fmt) + suffix


def _grid(header: Sequence[str], body: Sequence[Sequence[str]], markdown: bool = False) -> list[str]:
    if markdown:  # GitHub tables: text left, numbers right
        return ["| " + " | ".join(header) + " |", "| --- |" + " ---: |" * (len(header) - 1)] + [
            "| " + " | ".join(r) + " |" for r in body]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    return ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
            for r in [header, *body]]


def group_header(d: dict[str, Any]) -> str:
    text = (f"{d['case_description']} | {OPTIMS[d['optim']].label} | roofline: {d['roofline_probe']} "
            f"{_num(d['roofline_gbps'], '.1f')} GB/s median, {_num(d['roofline_best_gbps'], '.1f')} best")
    if d["others_cpu_share"] is not None:
        text += f" | other processes took {d['others_cpu_share']:.0%} of the CPUs"
    return text


def format_group(rows: Sequence[dict[str, Any]], markdown: bool = False) -> str:
    """One group's rows (one case, one optimizer); wrong and skipped rows are listed after the table."""
    gpu = any(d["launches"] is not None for d in rows)
    header = ["implementation", "B/param", "median", "p20-p80", "GB/s", "of roof"]
    header += ["launches", "syncs"] if gpu else []
    header += ["peak extra", "vs torch best"]
    body = []
    for d in rows:
        if d["status"] != "ok":
            continue
        cells = [d["impl"], str(d["bytes_per_param"]), fmt_time(d["median_s"]),
                 f"{fmt_time(d['p20_s'])}-{fmt_time(d['p80_s'])}", _num(d["gbps"], ".1f"),
                 _num(d["roofline_fraction"], ".2f")]
        cells += [_num(d["launches"], "d"), _num(d["syncs"], "d")] if gpu else []
        extra = fmt_bytes(d["peak_extra_bytes"])
        if d["peak_extra_fraction"]:
            extra += f" ({d['peak_extra_fraction']:.0%})"
        cells += [extra, _num(d["speedup_vs_torch_best"], ".2f", "x")]
        body.append(cells)
    lines = [group_header(rows[0])] + ([""] if markdown else []) + _grid(header, body, markdown)
    lines += [f"  {d['status'].upper()}: {d['impl']}: {d['reason']}" for d in rows if d["status"] != "ok"]
    return "\n".join(lines)


def format_sweep(rows: Sequence[dict[str, Any]], markdown: bool = False) -> str:
    """The sweep condensed, per optimizer and job: a line per size, a column per implementation with its median
    step time and (in brackets) its fraction of the roofline; the first column is the roofline's own time."""
    out = []
    for optim in dict.fromkeys(d["optim"] for d in rows):
        for job in ("update", "clip+check+update"):
            sel = [d for d in rows if d["optim"] == optim and d["job"] == job]
            if not sel:
                continue
            impls = list(dict.fromkeys(d["impl"] for d in sel))
            by = {(d["n_params"], d["impl"]): d for d in sel}
            body = []
            for n in sorted({d["n_params"] for d in sel}):
                any_row = next(d for d in sel if d["n_params"] == n)
                roof = any_row["roofline_gbps"]
                cells = [fmt_params(n), fmt_time(any_row["bytes_per_step"] / (roof * 1e9)) if roof else "-"]
                for name in impls:
                    d = by.get((n, name))
                    if d is None or d["status"] != "ok":
                        cells.append("-" if d is None else d["status"])
                    else:
                        cells.append(f"{fmt_time(d['median_s'])} ({_num(d['roofline_fraction'], '.2f')})")
                body.append(cells)
            out.append(f"sweep | {OPTIMS[optim].label} | {job} | median step time (fraction of the roofline)")
            out += ([""] if markdown else []) + _grid(["params", "roofline"] + impls, body, markdown)
            out.append("")
    return "\n".join(out).rstrip()


def format_run(rows: Sequence[dict[str, Any]], markdown: bool = False) -> str:
    """Every group's table, then the sweep's; as GitHub markdown for the README with `markdown`."""
    groups = list(dict.fromkeys((d["case"], d["optim"]) for d in rows if d["suite"] != "sweep"))
    parts = [format_group([d for d in rows if (d["case"], d["optim"]) == g], markdown) for g in groups]
    sweep = [d for d in rows if d["suite"] == "sweep"]
    if sweep:
        parts.append(format_sweep(sweep, markdown))
    return "\n\n".join(parts)


def format_summary(rows: Sequence[dict[str, Any]], markdown: bool = False) -> str:
    """One line per model/many-small case and optimizer: torch's fastest whole (clipped, checked) step, fusedopt's
    fastest, the speedup, both rows' fraction of the roofline, and the bare update's speedup; "" when there are no
    such groups. Where fusedopt has no timed row, the reason stands in for its numbers."""
    sel = [d for d in rows if d["suite"] != "sweep"]
    job = "clip+check+update"
    ours, theirs = _best_rows(sel, "fusedopt", job), _best_rows(sel, "torch", job)
    bare = _best_rows(sel, "fusedopt", "update")
    body = []
    for key in dict.fromkeys((d["case"], d["optim"]) for d in sel):
        any_row = next(d for d in sel if (d["case"], d["optim"]) == key)
        t, o, b = theirs.get(key), ours.get(key), bare.get(key)
        cells = [f"{key[0]} ({any_row['n_tensors']} tensors, {fmt_params(any_row['n_params'])})",
                 OPTIMS[key[1]].label,
                 f"{t['impl'].removesuffix(CLIP_SUFFIX)}: {fmt_time(t['median_s'])}" if t else "-"]
        if o is None:
            why = next((d["reason"] for d in sel if (d["case"], d["optim"]) == key and d["family"] == "fusedopt"
                        and d["reason"]), "no fusedopt row")
            cells += ["no kernel yet" if why.startswith(NoKernel.__name__ + ":") else why[:60], "-", "-", "-"]
        else:
            cells += [f"{o['variant']}: {fmt_time(o['median_s'])}", _num(o["speedup_vs_torch_best"], ".2f", "x"),
                      f"{_num(t and t['roofline_fraction'], '.2f')} / {_num(o['roofline_fraction'], '.2f')}",
                      _num(b and b["speedup_vs_torch_best"], ".2f", "x")]
        body.append(cells)
    if not body:
        return ""
    header = ["case", "optimizer", "torch's fastest whole step", "fusedopt whole step", "speedup",
              "of roofline: torch / fusedopt", "bare update speedup"]
    return "\n".join(["summary | clipped, checked step (clip/check) per case and optimizer"]
                     + ([""] if markdown else []) + _grid(header, body, markdown))


# --- verdict ---------------------------------------------------------------------------------------------------

def _geomean(xs: Sequence[float]) -> float:
    return math.exp(sum(math.log(x) for x in xs) / len(xs))


def _span(xs: Sequence[float], fmt: str, suffix: str = "") -> str:
    lo, hi = min(xs), max(xs)
    return f"{lo:{fmt}}{suffix}" if f"{lo:{fmt}}" == f"{hi:{fmt}}" else f"{lo:{fmt}}{suffix} to {hi:{fmt}}{suffix}"


def _best_rows(rows: Iterable[dict[str, Any]], family: str, job: str) -> dict[tuple[str, str], dict[str, Any]]:
    """Per (case, optim): the row of `family` doing `job` with the lowest median time."""
    best: dict[tuple[str, str], dict[str, Any]] = {}
    for d in rows:
        if d["family"] == family and d["job"] == job and d["status"] == "ok":
            key = (d["case"], d["optim"])
            if key not in best or d["median_s"] < best[key]["median_s"]:
                best[key] = d
    return best


def _suite_sentence(rows: Sequence[dict[str, Any]], suite: str) -> str | None:
    sel = [d for d in rows if d["suite"] == suite]
    if not sel:
        return None
    cases = list(dict.fromkeys(d["case_description"] for d in sel))
    optims = ", ".join(OPTIMS[o].label for o in dict.fromkeys(d["optim"] for d in sel))
    ours, theirs = _best_rows(sel, "fusedopt", "clip+check+update"), _best_rows(sel, "torch", "clip+check+update")
    where = f"On the {suite} suite ({'; '.join(cases)}; {optims})"
    if not ours:
        return f"{where} no fusedopt row ran."
    speedups = [d["speedup_vs_torch_best"] for d in ours.values() if d["speedup_vs_torch_best"] is not None]
    text = (f"{where}, fusedopt's clipped, checked step ({', '.join(sorted({d['variant'] for d in ours.values()}))}) "
            f"ran {_span(speedups, '.2f', 'x')}"
            + (f" (geometric mean {_geomean(speedups):.2f}x)" if len(speedups) > 1 else "")
            + " as fast as torch's fastest clip_grad_norm_ + isfinite + optimizer")
    fr = [d["roofline_fraction"] for d in ours.values() if d["roofline_fraction"] is not None]
    tfr = [d["roofline_fraction"] for d in theirs.values() if d["roofline_fraction"] is not None]
    if fr and tfr:
        text += f", at {_span(fr, '.2f')} of the roofline (torch's fastest: {_span(tfr, '.2f')})"
    bare = [d["speedup_vs_torch_best"] for d in _best_rows(sel, "fusedopt", "update").values()
            if d["speedup_vs_torch_best"] is not None]
    if bare:
        text += f"; its bare update ran {_span(bare, '.2f', 'x')} torch's fastest bare update"
    return text + "."


def _crossover(rows: Sequence[dict[str, Any]]) -> int | None:
    """The smallest size from which the row stays at or above BANDWIDTH_BOUND of the roofline."""
    found = None
    for d in sorted(rows, key=lambda d: -d["n_params"]):
        if d["roofline_fraction"] is None or d["roofline_fraction"] < BANDWIDTH_BOUND:
            break
        found = d["n_params"]
    return found


def _sweep_sentence(rows: Sequence[dict[str, Any]]) -> str | None:
    sel = [d for d in rows if d["suite"] == "sweep" and d["job"] == "clip+check+update" and d["status"] == "ok"]
    if not sel:
        return None
    optim = "adamw" if any(d["optim"] == "adamw" for d in sel) else sel[0]["optim"]
    sel = [d for d in sel if d["optim"] == optim]
    ours, theirs = _best_rows(sel, "fusedopt", sel[0]["job"]), _best_rows(sel, "torch", sel[0]["job"])
    sizes = sorted({d["n_params"] for d in sel})
    smallest, largest = sizes[0], sizes[-1]

    def by_size(best: dict) -> list[dict[str, Any]]:
        return [d for (case, _), d in best.items()]

    def reach(best: dict) -> str:
        n = _crossover(by_size(best))
        return f"from {fmt_params(n)} params on" if n is not None else f"at no size up to {fmt_params(largest)}"

    small_t = [d for d in by_size(theirs) if d["n_params"] == smallest]
    text = (f"In the sweep (one tensor of {fmt_params(smallest)} to {fmt_params(largest)} params, "
            f"{OPTIMS[optim].label}, clipped and checked), torch's fastest reaches half the roofline "
            f"{reach(theirs)}")
    if ours:
        small_o = [d for d in by_size(ours) if d["n_params"] == smallest]
        text += f" and fusedopt {reach(ours)}"
        if small_o and small_t:
            text += (f"; at {fmt_params(smallest)} params a step is per-step overhead: fusedopt "
                     f"{fmt_time(small_o[0]['median_s'])}, torch {fmt_time(small_t[0]['median_s'])}")
    return text + "."


def absent_by_variant(absent: dict[str, dict[str, str]]) -> dict[str, list[str]]:
    """{optim: {variant: why}} -> {variant: [optimizer labels]}: "fused" -> ["RMSprop (momentum)", ...]."""
    out: dict[str, list[str]] = {}
    for o, a in absent.items():
        for variant in a:
            out.setdefault(variant, []).append(OPTIMS[o].label)
    return out


def is_no_kernel(d: dict[str, Any]) -> bool:
    """A fusedopt row skipped because its backend has no compiled kernel for the rule (impls.NoKernel)."""
    return bool(d["reason"]) and d["reason"].startswith(NoKernel.__name__ + ":")


def verdict(rows: Sequence[dict[str, Any]], excluded: dict[str, str] | None = None,
            absent: dict[str, dict[str, str]] | None = None, dropped: dict[str, str] | None = None) -> str:
    """One paragraph over the whole run, with the warnings that change how far the numbers can be trusted."""
    parts = [s for s in (_suite_sentence(rows, "model"), _suite_sentence(rows, "many-small"), _sweep_sentence(rows))
             if s]
    wrong = [d for d in rows if d["status"] == "wrong"]
    if wrong:
        parts.append(f"{len(wrong)} row(s) disagreed with torch after one step and were not timed: "
                     + "; ".join(f"{d['impl']} ({d['case']}, {d['optim']})" for d in wrong[:5])
                     + ("; ..." if len(wrong) > 5 else "") + ".")
    no_kernel: dict[str, list[str]] = {}
    for d in rows:
        if d["status"] == "skipped" and is_no_kernel(d):
            labels = no_kernel.setdefault(d["variant"], [])
            if OPTIMS[d["optim"]].label not in labels:
                labels.append(OPTIMS[d["optim"]].label)
    if no_kernel:
        parts.append("No compiled kernel yet, so fusedopt's rows were skipped (the pure-torch reference that "
                     "backend='auto' falls back to is not timed): "
                     + "; ".join(f"{b}: {', '.join(labels)}" for b, labels in no_kernel.items()) + ".")
    skipped = sorted({d["impl"] for d in rows if d["status"] == "skipped" and not is_no_kernel(d)})
    if skipped:
        parts.append(f"Skipped after an error: {', '.join(skipped)}.")
    untimed = sorted({d["impl"].removesuffix(CLIP_SUFFIX) for d in rows if d["status"] == "untimed"})
    if untimed:
        parts.append(f"Checked but not timed (--untimed), so not among torch's fastest: {', '.join(untimed)}.")
    if absent:
        parts.append("Absent baselines (they raise here): "
                     + "; ".join(f"{v} for {', '.join(labels)}" for v, labels in absent_by_variant(absent).items())
                     + ".")
    if dropped:
        parts.append("Left out: " + "; ".join(f"{OPTIMS[o].label} ({why})" for o, why in dropped.items()) + ".")
    if excluded:
        parts.append("Backends left out: " + "; ".join(f"{k} ({v})" for k, v in excluded.items()) + ".")
    shares = [d["others_cpu_share"] for d in rows if d["others_cpu_share"] is not None]
    if shares and max(shares) > BUSY_SHARE:
        parts.append(f"Other processes used up to {max(shares):.0%} of the CPUs during the timed rounds; they stall "
                     f"torch's per-tensor parallel loops far more than long passes, so rerun on a quiet machine.")
    ratios = [d["roofline_gbps"] / d["roofline_best_gbps"] for d in rows if d["roofline_gbps"] and
              d["roofline_best_gbps"]]
    if ratios and min(ratios) < NOISY_PROBE:
        parts.append(f"Memory bandwidth was noisy (roofline probe median down to {min(ratios):.0%} of its best), "
                     f"so trust the paired speedups more than absolute times.")
    return " ".join(parts) if parts else "No rows ran."


# --- environment, JSON -----------------------------------------------------------------------------------------

def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=Path(__file__).resolve().parent, capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()


def machine_slug(env: dict[str, Any]) -> str:
    """A file-name-safe machine label: "cpu-2core" or, say, "nvidia-h100-80gb-hbm3"."""
    if env["device_type"] == "cuda":
        return re.sub(r"[^a-z0-9]+", "-", env["device_name"].lower()).strip("-")
    return f"cpu-{env['cpu_count']}core"


def environment(device: torch.device, backends: Sequence[str] = (), excluded: dict[str, str] | None = None
                ) -> dict[str, Any]:
    status = _git("status", "--porcelain")
    try:
        import triton
        triton_version = triton.__version__
    except Exception:  # not installed: recorded as None
        triton_version = None
    return dict(
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        device_type=device.type, device_name=device_name(device), cpu_name=cpu_name(), cpu_count=os.cpu_count(),
        torch_threads=torch.get_num_threads(), torch=torch.__version__, cuda=torch.version.cuda,
        triton=triton_version, python=platform.python_version(), platform=platform.platform(),
        loadavg=list(os.getloadavg()), git_sha=_git("rev-parse", "HEAD"),
        git_dirty=None if status is None else bool(status), fusedopt_backends=list(backends),
        fusedopt_excluded=dict(excluded or {}))


ENV_KEYS = ("date", "device_type", "device_name", "cpu_count", "torch", "cuda", "triton", "git_sha")


def write_json(path: str | os.PathLike, env: dict[str, Any], config: dict[str, Any],
               rows: Sequence[dict[str, Any]], verdict_text: str) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    data = dict(schema=SCHEMA, env=env, config=config, verdict=verdict_text, rows=list(rows))
    Path(path).write_text(json.dumps(data, indent=1) + "\n")


def load_json(path: str | os.PathLike) -> dict[str, Any]:
    """A saved run, validated: a clear error names what is missing instead of a KeyError deep in a plot."""
    data = json.loads(Path(path).read_text())
    problems = validate(data)
    if problems:
        raise ValueError(f"{path} is not a fusedopt.bench result: {'; '.join(problems)}")
    return data


def validate(data: Any) -> list[str]:
    if not isinstance(data, dict):
        return ["the top level is not an object"]
    if data.get("schema") != SCHEMA:
        return [f"schema is {data.get('schema')!r}, expected {SCHEMA}"]
    problems = [f"missing top-level key {k!r}" for k in ("env", "config", "rows", "verdict") if k not in data]
    if problems:
        return problems
    problems += [f"env lacks {k!r}" for k in ENV_KEYS if k not in data["env"]]
    for i, row in enumerate(data["rows"]):
        missing = [k for k in ROW_KEYS if k not in row]
        if missing:
            problems.append(f"rows[{i}] lacks {', '.join(missing)}")
            break
    return problems


# --- compare ---------------------------------------------------------------------------------------------------

def compare(a: dict[str, Any], b: dict[str, Any]) -> str:
    """Rows present in both runs, matched by (case, optimizer, implementation): medians, the change of B against A,
    and '*' where the p20-p80 ranges do not overlap (a change larger than either run's spread)."""
    key = lambda d: (d["case"], d["optim"], d["impl"])  # noqa: E731
    rows_a = {key(d): d for d in a["rows"] if d["status"] == "ok"}
    body, ratios = [], []
    for d in b["rows"]:
        old = rows_a.get(key(d))
        if old is None or d["status"] != "ok":
            continue
        ratios.append(d["median_s"] / old["median_s"])
        change = ratios[-1] - 1
        separate = d["p80_s"] < old["p20_s"] or d["p20_s"] > old["p80_s"]
        body.append([f"{d['case']} {d['optim']} {d['impl']}", fmt_time(old["median_s"]), fmt_time(d["median_s"]),
                     f"{change:+.1%}{' *' if separate else '  '}",
                     _num(old["speedup_vs_torch_best"], ".2f", "x"), _num(d["speedup_vs_torch_best"], ".2f", "x")])
    ea, eb = a["env"], b["env"]
    lines = [f"A: {ea['date']} {ea['device_name']} git {str(ea['git_sha'])[:10]}",
             f"B: {eb['date']} {eb['device_name']} git {str(eb['git_sha'])[:10]}"]
    if not body:
        return "\n".join(lines + ["No rows in common."])
    lines += _grid(["case optim implementation", "A median", "B median", "B vs A", "A vs torch best",
                    "B vs torch best"], body)
    lines.append(f"{len(body)} rows in common; B's median time is {_geomean(ratios):.2f}x A's (geometric mean); "
                 f"* marks rows whose p20-p80 ranges do not overlap.")
    return "\n".join(lines)
