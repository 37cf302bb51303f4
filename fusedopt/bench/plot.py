"""PNG plots from a saved run's JSON (matplotlib, Agg backend: no display needed).

- `<stem>-sweep.png`: time per step against params for the sweep, log-log, one panel per optimizer and job
  (optimizers wrap after four columns), the p20-p80 band shaded, and the roofline (the job's bytes at the probe's
  median rate) drawn as a dashed line. Where the curves run flat, per-step overhead dominates; where they run parallel to the roofline, bandwidth does.
- `<stem>-speedup.png`: speedup over torch's fastest implementation of the same job (for Lion: lion-pytorch), a
  panel per case (model and many-small suites) and job, bars per optimizer and implementation; the line at 1 is
  the baseline's best.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
from matplotlib.ticker import FuncFormatter  # noqa: E402

from .impls import OPTIMS  # noqa: E402
from .report import fmt_params  # noqa: E402

JOBS = ("update", "clip+check+update")
JOB_TITLE = {"update": "bare update", "clip+check+update": "clip + non-finite check + update"}
# Baselines: torch.optim's ways, and lion-pytorch (a for-loop too) for Lion.
TORCH_COLORS = {"for-loop": "#9e9e9e", "foreach": "#5b8fd9", "fused": "#1a3e8c", "lion-pytorch": "#9e9e9e"}
SWEEP_COLUMNS = 4
FUSEDOPT_COLORS = ("#d9480f", "#2b8a3e", "#862e9c", "#e8590c")


def _colors(rows: Sequence[dict[str, Any]]) -> dict[str, str]:
    """Colour by variant, the same for both jobs: greys and blues for torch, warm colours for fusedopt."""
    backends = sorted({d["variant"] for d in rows if d["family"] == "fusedopt"})
    out = dict(TORCH_COLORS)
    out.update({b: FUSEDOPT_COLORS[i % len(FUSEDOPT_COLORS)] for i, b in enumerate(backends)})
    return out


def _title(data: dict[str, Any], what: str) -> str:
    env = data["env"]
    return f"{what}: {env['device_name']} ({env['cpu_count']} cores), torch {env['torch']}, {env['date'][:10]}"


def plot_sweep(data: dict[str, Any], path: str | os.PathLike) -> bool:
    rows = [d for d in data["rows"] if d["suite"] == "sweep"]
    if not rows:
        return False
    optims = list(dict.fromkeys(d["optim"] for d in rows))
    colors = _colors(rows)
    # Optimizers wrap after SWEEP_COLUMNS panels; each takes two panels, one above the other (bare, clipped).
    ncols = min(SWEEP_COLUMNS, len(optims))
    nrows = len(JOBS) * -(-len(optims) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(max(8.0, 5.2 * ncols), 4.5 * nrows), squeeze=False)
    for ax in axes.flat[len(optims) * len(JOBS):]:
        ax.set_visible(False)
    for i, job in enumerate(JOBS):
        for j, optim in enumerate(optims):
            ax = axes[(j // ncols) * len(JOBS) + i][j % ncols]
            sel = [d for d in rows if d["optim"] == optim and d["job"] == job]
            for impl in dict.fromkeys(d["impl"] for d in sel):
                pts = sorted((d for d in sel if d["impl"] == impl and d["status"] == "ok"), key=lambda d: d["n_params"])
                if not pts:
                    continue
                x = [d["n_params"] for d in pts]
                fam = pts[0]["family"]
                ax.plot(x, [d["median_s"] for d in pts], marker="o", ms=3, color=colors[pts[0]["variant"]],
                        lw=2.2 if fam == "fusedopt" else 1.4, label=impl.replace(" + clip/check", ""))
                ax.fill_between(x, [d["p20_s"] for d in pts], [d["p80_s"] for d in pts], alpha=0.2,
                                color=colors[pts[0]["variant"]], lw=0)
            roof = sorted({d["n_params"]: d for d in sel if d["roofline_gbps"]}.values(), key=lambda d: d["n_params"])
            if roof:
                gbs = roof[-1]["roofline_gbps"]
                ax.plot([d["n_params"] for d in roof], [d["bytes_per_step"] / (d["roofline_gbps"] * 1e9) for d in roof],
                        "k--", lw=1.2, label=f"roofline ({roof[0]['roofline_probe']}, ~{gbs:.0f} GB/s)")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xticks(sorted({d["n_params"] for d in rows}))
            ax.minorticks_off()
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: fmt_params(int(v))))
            ax.grid(True, which="major", alpha=0.3)
            ax.set_title(f"{OPTIMS[optim].label}: {JOB_TITLE[job]}", fontsize=10)
            if j % ncols == 0:
                ax.set_ylabel("time per step (s), median; band p20-p80")
            if i == len(JOBS) - 1:
                ax.set_xlabel("params in the one tensor")
            ax.legend(fontsize=7, loc="upper left")
    fig.suptitle(_title(data, "Sweep, one fp32 tensor") + "\nflat: per-step overhead; parallel to the roofline: "
                 "bandwidth-bound", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.6 / fig.get_figheight()))  # room for the two-line title
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_speedup(data: dict[str, Any], path: str | os.PathLike) -> bool:
    rows = [d for d in data["rows"] if d["suite"] != "sweep"]
    if not rows:
        return False
    case_names = list(dict.fromkeys(d["case"] for d in rows))
    optims = list(dict.fromkeys(d["optim"] for d in rows))
    colors = _colors(rows)
    # A panel per case (rows) and job (columns); the optimizers along x, a bar per implementation. Baselines are
    # named by their way ("torch fused", "lion-pytorch") and fusedopt by its backend, so one legend serves all.
    fig, axes = plt.subplots(len(case_names), len(JOBS), figsize=(max(12.0, 2 * (1.0 * len(optims) + 1.5)),
                                                                 3.6 * len(case_names) + 1), squeeze=False)
    handles: dict[str, Any] = {}
    for r, case in enumerate(case_names):
        for i, job in enumerate(JOBS):
            ax = axes[r][i]
            sel = [d for d in rows if d["job"] == job and d["case"] == case]
            impls = list(dict.fromkeys(d["impl"] for d in sel))
            width = 0.8 / max(1, len(impls))
            by = {(d["optim"], d["impl"]): d for d in sel}
            top = 1.0
            for k, impl in enumerate(impls):
                xs, ys = [], []
                for g, optim in enumerate(optims):
                    d = by.get((optim, impl))
                    if d is not None and d["speedup_vs_torch_best"] is not None:
                        xs.append(g + (k - (len(impls) - 1) / 2) * width)
                        ys.append(d["speedup_vs_torch_best"])
                if not xs:
                    continue
                top = max(top, *ys)
                variant = next(d["variant"] for d in sel if d["impl"] == impl)
                label = impl.replace(" + clip/check", "")
                bars = ax.bar(xs, ys, width * 0.95, color=colors[variant], label=label)
                handles.setdefault(label, bars)
                if impl.startswith("fusedopt"):
                    ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
            ax.axhline(1.0, color="k", lw=0.8)
            ax.set_xticks(range(len(optims)))
            ax.set_xticklabels([OPTIMS[o].label.replace(" (", "\n(") for o in optims], fontsize=8)
            ax.set_ylim(0, top * 1.15)
            ax.set_ylabel("speedup over torch's fastest (x)", fontsize=8)
            ax.set_title(f"{case}: {JOB_TITLE[job]}", fontsize=10)
            ax.grid(True, axis="y", alpha=0.3)
    height = fig.get_figheight()
    fig.legend(list(handles.values()), list(handles), fontsize=8, ncol=min(6, len(handles)), loc="lower center")
    fig.suptitle(_title(data, "Speedup, median of per-round ratios") + "\nclip + check: torch's clip_grad_norm_ + "
                 "isfinite sync + step; fusedopt's max_grad_norm + nonfinite='skip'", fontsize=10)
    fig.tight_layout(rect=(0, 0.4 / height, 1, 1 - 0.6 / height))  # room for the legend below, the title above
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_all(data: dict[str, Any], stem: str | os.PathLike) -> list[Path]:
    """Every plot the run's rows allow, as `<stem>-sweep.png` and `<stem>-speedup.png`; returns the paths."""
    out = []
    for suffix, fn in (("sweep", plot_sweep), ("speedup", plot_speedup)):
        path = Path(f"{stem}-{suffix}.png")
        if fn(data, path):
            out.append(path)
    return out
