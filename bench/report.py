"""Benchmark outputs: the terminal table, JSON with the environment, CSV history, Markdown + plot.

A report is one JSON-ready dict:
    {"schema": 1, "environment": {...}, "settings": {...}, "ceilings": {...} | None,
     "suites": {name: {"rows": [row, ...], "notes": [...], "text": str,
                       "telemetry": {...}, "seconds": float}},
     "extra": {...}}   # e.g. the GPU check's test summary
Rows are the dicts of `bench.suites.common.make_row` (fields in ROW_FIELDS, plus extras that only
the JSON keeps). Plots use matplotlib's object API (no pyplot, no global backend switch), which
renders with Agg.
"""
from __future__ import annotations

import csv
import datetime
import json
import math
import platform
import re
import subprocess
from pathlib import Path

import torch

from .bounds import FAIL
from .suites.common import ROW_FIELDS

SCHEMA = 1
REPO_ROOT = Path(__file__).resolve().parent.parent
ENV_CSV_FIELDS = ("date", "commit", "device_name", "torch", "command")

# (header, row key, format) of the terminal and Markdown tables.
TABLE_COLUMNS = (
    ("suite", "suite", "s"), ("case", "case", "s"), ("impl", "impl", "s"), ("dtype", "dtype", "s"),
    ("median ms", "median_ms", ".4g"), ("p20-p80 ms", None, "spread"), ("GFLOP", "flops", "giga"),
    ("GB", "bytes", "giga"), ("TFLOP/s", "tflops", ".3g"), ("GB/s", "gbps", ".3g"),
    ("%floor", "pct_of_floor", ".1f"), ("max abs", "max_abs", ".2e"), ("rel L2", "rel_l2", ".2e"),
    ("cosine", "cosine", ".6f"), ("PSNR dB", "psnr", ".1f"), ("SSIM", "ssim", ".4f"),
    ("mem MiB", "peak_mem_mib", ".1f"), ("attention", "attention", "s"), ("bound", None, "limit"),
    ("verdict", "verdict", "s"),
)
MARKDOWN_COLUMNS = (*TABLE_COLUMNS, ("oracle", "oracle", "s"), ("note", "note", "s"))
LEFT_ALIGNED = {"suite", "case", "impl", "dtype", "attention", "bound", "verdict", "note"}
TERMINAL_NOTE_CHARS = 48


# ------------------------------------------------------------------------------------------------
# Environment
# ------------------------------------------------------------------------------------------------

def git_state(repo: Path = REPO_ROOT) -> dict:
    """{"commit": sha or None, "dirty": bool or None} of the repository holding this package."""
    def git(*args):
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10)

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return dict(commit=None, dirty=None)
        status = git("status", "--porcelain", "--untracked-files=no")
        return dict(commit=head.stdout.strip(), dirty=bool(status.stdout.strip()))
    except (OSError, subprocess.SubprocessError):
        return dict(commit=None, dirty=None)


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except Exception:  # noqa: BLE001 - absent or broken optional package
        return None


def _nvml_driver() -> str | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            version = pynvml.nvmlSystemGetDriverVersion()
        finally:
            pynvml.nvmlShutdown()
        return version.decode() if isinstance(version, bytes) else str(version)
    except Exception:  # noqa: BLE001 - no NVML: the driver version stays unknown
        return None


def environment(device: torch.device, command: str) -> dict:
    """Where and how the numbers were made: GPU/CPU, driver, versions, commit, date, command line."""
    device = torch.device(device)
    on_gpu = device.type == "cuda"
    cpu_name = f"CPU {platform.processor() or platform.machine()}"
    return dict(
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        command=command,
        device=device.type,
        device_name=torch.cuda.get_device_name(device) if on_gpu else cpu_name,
        gpu_count=torch.cuda.device_count() if torch.cuda.is_available() else 0,
        driver=_nvml_driver() if on_gpu else None,
        cuda=torch.version.cuda,
        torch=torch.__version__,
        triton=_version("triton"),
        diffusers=_version("diffusers"),
        python=platform.python_version(),
        platform=platform.platform(),
        cpu_threads=torch.get_num_threads(),
        **git_state(),
    )


# ------------------------------------------------------------------------------------------------
# Rows
# ------------------------------------------------------------------------------------------------

def all_rows(report: dict) -> list[dict]:
    return [row for suite in report["suites"].values() for row in suite["rows"]]


def failures(suites: dict) -> list[str]:
    """One line per failure: a suite that raised, a row that crashed or is over its bound."""
    out = []
    for name, suite in suites.items():
        if suite.get("failed"):
            out.append(f"{name}: the suite raised ({suite['notes'][0] if suite['notes'] else 'no message'})")
        for row in suite["rows"]:
            if row.get("verdict") != FAIL:
                continue
            what = f"{name} / {row['case']} / {row['impl']} ({row.get('dtype') or '?'})"
            if row.get("acc_metric") and row.get(row["acc_metric"]) is not None:
                value = row[row["acc_metric"]]
                out.append(f"{what}: {row['acc_metric']} {value:.3g} outside its bound "
                           f"({'<=' if row['acc_metric'] == 'rel_l2' else '>='} {row['acc_limit']:.3g}: "
                           f"{row['acc_rule']})")
            else:
                out.append(f"{what}: {row.get('note') or 'failed'}")
    return out


def bound_lines(rows: list[dict]) -> list[str]:
    """One line per judged row: its bound and where the limit comes from (bench/bounds.py)."""
    return [f"{r['case']} / {r['impl']} ({r['dtype']}): {r['verdict']}, {_cell(r, None, 'limit')} "
            f"[{r['acc_rule']}]" for r in rows if r.get("acc_rule")]


def _cell(row: dict, key: str | None, fmt: str) -> str:
    if fmt == "spread":
        low, high = row.get("p20_ms"), row.get("p80_ms")
        return "" if low is None or high is None else f"{low:.4g}-{high:.4g}"
    if fmt == "limit":  # the accuracy bound: "rel_l2 <= 9.5e-03", "psnr >= 36.1"
        metric, limit = row.get("acc_metric"), row.get("acc_limit")
        return "" if metric is None or limit is None else f"{metric} {'<=' if metric == 'rel_l2' else '>='} {limit:.3g}"
    value = row.get(key)
    if value is None:
        return ""
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    if fmt == "giga":
        return "" if value == 0 else f"{value / 1e9:.4g}"
    return format(value, fmt) if fmt != "s" else str(value)


def table_cells(rows: list[dict], columns=TABLE_COLUMNS) -> tuple[list[str], list[list[str]]]:
    """Headers and formatted cells, dropping columns that are empty in every row."""
    cells = [[_cell(r, key, fmt) for _, key, fmt in columns] for r in rows]
    keep = [i for i in range(len(columns)) if any(c[i] for c in cells)] or [0]
    return [columns[i][0] for i in keep], [[c[i] for i in keep] for c in cells]


def format_table(rows: list[dict]) -> str:
    """A fixed-width terminal table of the rows (text left-aligned, numbers right-aligned); the
    note column is cut to TERMINAL_NOTE_CHARS (the Markdown and JSON keep it whole)."""
    if not rows:
        return "(no rows)"
    columns = (*TABLE_COLUMNS, ("note", "note", "s"))
    headers, cells = table_cells(rows, columns)
    if headers[-1] == "note":
        for c in cells:
            if len(c[-1]) > TERMINAL_NOTE_CHARS:
                c[-1] = c[-1][: TERMINAL_NOTE_CHARS - 3] + "..."
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    def line(values):
        return "  ".join(v.ljust(w) if h in LEFT_ALIGNED else v.rjust(w) for v, w, h in zip(values, widths, headers))

    return "\n".join([line(headers), "  ".join("-" * w for w in widths), *(line(c) for c in cells)])


def markdown_table(rows: list[dict]) -> str:
    if not rows:
        return "_no rows_"
    headers, cells = table_cells(rows, MARKDOWN_COLUMNS)
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in cells]
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------
# Files
# ------------------------------------------------------------------------------------------------

def _json_default(value):
    if isinstance(value, (torch.dtype, torch.device, Path)):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def _finite(value):
    """JSON has no inf/nan: write them as strings ("inf") so every reader can parse the file."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def write_json(path: Path, report: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_finite(report), indent=1, default=_json_default, allow_nan=False) + "\n")
    return path


def append_csv(path: Path, rows: list[dict], env: dict) -> Path:
    """Append one line per row (environment columns first) to the history CSV at `path`.

    A file written with other columns (an older schema) is rewritten once with the union of the
    columns, so history is never lost and every line stays parseable with one header.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = [*ENV_CSV_FIELDS, *ROW_FIELDS]
    lines = [{**{k: env.get(k) for k in ENV_CSV_FIELDS}, **{k: r.get(k) for k in fields[len(ENV_CSV_FIELDS):]}}
             for r in rows]
    if path.exists() and path.stat().st_size > 0:
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            existing_fields = list(reader.fieldnames or [])
            old = list(reader) if existing_fields != fields else None
        if old is not None:
            fields = existing_fields + [f for f in fields if f not in existing_fields]
            with path.open("w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=fields)
                writer.writeheader()
                writer.writerows(old)
        with path.open("a", newline="") as handle:
            csv.DictWriter(handle, fieldnames=fields).writerows(lines)
        return path
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(lines)
    return path


def plot_speed_vs_accuracy(rows: list[dict], path: Path) -> Path | None:
    """One panel per (suite, case) with >= 1 row having both a time and a rel L2: median ms vs
    rel L2 (log-log), each point labelled by its implementation, the oracle's time as a dashed
    line. None when nothing to plot or matplotlib is missing."""
    groups: dict[tuple[str, str], list[dict]] = {}
    oracle_ms: dict[tuple[str, str], float] = {}
    for r in rows:
        if r.get("median_ms") and r.get("rel_l2") is not None and math.isfinite(r["rel_l2"]):
            groups.setdefault((r["suite"], r["case"]), []).append(r)
        elif r.get("median_ms") and r.get("oracle") == "(is the oracle)":
            oracle_ms[(r["suite"], r["case"])] = r["median_ms"]
    if not groups:
        return None
    try:
        from matplotlib.figure import Figure
        from matplotlib.ticker import NullFormatter
    except ImportError:
        return None
    columns = min(3, len(groups))
    nrows = -(-len(groups) // columns)
    fig = Figure(figsize=(5 * columns, 3.8 * nrows), layout="constrained")
    floor = 1e-16  # exact matches (rel L2 0) are drawn on the bottom edge
    for i, ((suite, case), members) in enumerate(sorted(groups.items())):
        ax = fig.add_subplot(nrows, columns, i + 1)
        xs = [m["median_ms"] for m in members]
        ys = [max(m["rel_l2"], floor) for m in members]
        ax.scatter(xs, ys)
        for m, x, y in zip(members, xs, ys):
            ax.annotate(f"{m['impl']} ({m['dtype']})", (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        if (suite, case) in oracle_ms:  # the oracle's own time, for scale
            ax.axvline(oracle_ms[(suite, case)], color="gray", linestyle="--", linewidth=1)
            ax.annotate("oracle", (oracle_ms[(suite, case)], floor), fontsize=7, color="gray",
                        xytext=(3, 3), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("median time (ms)")
        ax.set_ylabel("rel L2 vs oracle")
        ax.set_title(f"{suite}: {case}", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def telemetry_line(telemetry: dict | None) -> str:
    """One line summarizing a TelemetrySummary dict, or why there is none."""
    if not telemetry:
        return ""
    if not telemetry.get("available"):
        return f"telemetry: {telemetry.get('note') or 'unavailable'}"
    parts = [f"{label} {telemetry[key]:.0f}{unit}" for key, label, unit in (
        ("peak_memory_mib", "peak mem", " MiB"), ("max_power_w", "max power", " W"),
        ("mean_power_w", "mean power", " W"), ("max_sm_clock_mhz", "max SM clock", " MHz"),
        ("mean_util_pct", "mean util", "%"), ("max_temp_c", "max temp", " C")) if telemetry.get(key) is not None]
    return "telemetry (NVML): " + ", ".join(parts)


def markdown_report(report: dict, plot_name: str | None = None, title: str = "wan_engine benchmark") -> str:
    env, settings = report["environment"], report["settings"]
    lines = [f"# {title}", "",
             f"- date: {env['date']}", f"- device: {env['device_name']} (driver {env.get('driver') or 'n/a'}, "
             f"CUDA {env.get('cuda') or 'n/a'}, {env.get('gpu_count', 0)} GPUs)",
             f"- torch {env['torch']}, triton {env.get('triton') or 'n/a'}, diffusers {env.get('diffusers') or 'n/a'}, "
             f"python {env['python']}",
             f"- commit: {env.get('commit') or 'unknown'}{' (dirty tree)' if env.get('dirty') else ''}",
             f"- reproduce: `{env['command']}`",
             "- settings: " + ", ".join(f"{k}={v}" for k, v in settings.items())]
    ceilings = report.get("ceilings")
    if ceilings:
        lines.append(f"- ceilings: {ceilings['matmul_tflops']:.3g} TFLOP/s matmul, {ceilings['copy_gbps']:.4g} GB/s "
                     f"copy ({ceilings['label']})")
    problems = report["failures"] if "failures" in report else failures(report["suites"])
    lines += ["", f"## Verdict: {'FAIL' if problems else 'PASS'}", ""]
    lines += [f"- {p}" for p in problems] or ["No suite raised, no implementation crashed, every judged row is "
                                              "within its accuracy bound."]
    for name, extra in report.get("extra", {}).items():
        lines += ["", f"## {name}", "", "```", str(extra).strip(), "```"]
    for name, suite in report["suites"].items():
        lines += ["", f"## {name} ({suite.get('seconds', 0):.1f} s)", ""]
        # A suite with preformatted text (the roofline breakdown) shows that instead of its rows.
        lines += ["```", suite["text"], "```"] if suite.get("text") else [markdown_table(suite["rows"])]
        bounds = bound_lines(suite["rows"])
        if bounds:
            lines += ["", "Accuracy bounds (bench/bounds.py):", ""] + [f"- {b}" for b in bounds]
        notes = list(suite.get("notes", []))
        telemetry = telemetry_line(suite.get("telemetry"))
        if telemetry:
            notes.append(telemetry)
        if notes:
            lines += [""] + [f"- {n}" for n in notes]
    if plot_name:
        lines += ["", "## Speed vs accuracy", "", f"![speed vs accuracy]({plot_name})"]
    lines += ["", "Timing: median (p20-p80) after warm-up; CUDA events on GPU, perf_counter on CPU. "
              "%floor = 100 * roofline floor / median, against the ceilings above. Accuracy: against "
              "each row's oracle (the eager reference, fp32 unless stated).", ""]
    return "\n".join(lines)


def report_stem(report: dict, label: str) -> str:
    stamp = report["environment"]["date"].replace("-", "").replace(":", "").split("+")[0]
    return re.sub(r"[^A-Za-z0-9._-]+", "_", f"{stamp}-{label}")


def write_outputs(report: dict, out_dir: Path, label: str, *, csv_history: bool = True,
                  plot: bool = True) -> dict[str, Path]:
    """Write <stem>.json, <stem>.md (+ <stem>.png) and append history.csv under `out_dir`."""
    out_dir = Path(out_dir)
    stem = report_stem(report, label)
    paths = {"json": write_json(out_dir / f"{stem}.json", report)}
    plot_path = plot_speed_vs_accuracy(all_rows(report), out_dir / f"{stem}.png") if plot else None
    if plot_path:
        paths["plot"] = plot_path
    md = out_dir / f"{stem}.md"
    md.write_text(markdown_report(report, plot_path.name if plot_path else None))
    paths["markdown"] = md
    if csv_history:
        paths["csv"] = append_csv(out_dir / "history.csv", all_rows(report), report["environment"])
    return paths
