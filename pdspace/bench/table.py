"""Design tables: finished sweeps collected into one table of learning curves (`pdspace-bench table`).

One row per run: the design and its dimensions, task, seed, budget and parameter counts, the validation
objective after every evaluation (the learning curve), the seconds a training epoch took, and where the run
kept them (`predictions.npz`) its best evaluation's per-example dev predictions (`pred_index`, `gold`, `pred`;
empty lists otherwise). `source` is the run's result.json relative to `--relative-to` (default: the parent
of the sweep dir it was found under), so a shipped table names no machine's paths. Parquet (lists stay
lists) or CSV (lists as JSON). A table is the oracle of the replay benchmark.
"""

from __future__ import annotations

import argparse
import csv
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pdspace import results
from pdspace.design.space import Design
from pdspace.errors import cannot_write

COLUMNS = ("design_id", "grouping", "allocation", "tunable", "strategies", "task", "seed", "backbone",
           "budget_fraction", "trainable_params", "fraction", "objective", "curve", "epochs", "best",
           "train_s_per_epoch", "status", "method", "source", "pred_index", "gold", "pred")
LISTS = ("curve", "pred_index", "gold", "pred")


def row_of(result: Mapping[str, Any]) -> dict[str, Any] | None:
    """A table row of a completed or pruned run with a design and a curve (None for any other run)."""
    curve = results.curve(result)
    if result.get("status") not in ("completed", "pruned") or not curve or not result.get("design"):
        return None
    design = Design.from_dict(result["design"])
    epochs = len(curve)
    timings = result.get("timings") or {}
    return {"design_id": str(design), "grouping": "-".join(map(str, design.groups)), "allocation": design.allocation,
            "tunable": design.mask,
            "strategies": "|".join("+".join(s) or "-" for s in design.strategies), "task": result.get("task"),
            "seed": int(result.get("seed") or 0), "backbone": result.get("backbone"),
            "budget_fraction": result.get("budget_fraction"),
            "trainable_params": int((result.get("params") or {}).get("trainable_params") or 0),
            "fraction": float((result.get("params") or {}).get("fraction") or 0.0),
            "objective": (result.get("objective") or {}).get("name"), "curve": curve, "epochs": epochs,
            "best": max(curve), "train_s_per_epoch": float(timings.get("train_s") or 0.0) / epochs,
            "status": result["status"], "method": result.get("method") or "", "source": result.get("_path", ""),
            **_predictions(result)}


def _predictions(result: Mapping[str, Any]) -> dict[str, list[Any]]:
    from pdspace.stats import load_predictions

    found = load_predictions(result["_path"], result) if result.get("_path") else None
    if found is None:
        return {"pred_index": [], "gold": [], "pred": []}
    index, gold, pred = found
    return {"pred_index": index.tolist(), "gold": gold.tolist(), "pred": pred.tolist()}


def collect(paths: Sequence[str | Path], relative_to: str | Path | None = None) -> list[dict[str, Any]]:
    """The rows of every run under `paths` (sweep dirs or run dirs, searched recursively); each `source` relative
    to `relative_to` (default: the parent of the path it was found under)."""
    rows = []
    for path in map(Path, paths):
        parent = path.resolve().parent
        base = Path(relative_to).resolve() if relative_to is not None else parent
        found, _ = results.read_all(results.find([path]))
        for row in filter(None, map(row_of, found)):
            source = Path(row["source"]).resolve()
            row["source"] = str(source.relative_to(base if source.is_relative_to(base) else parent))
            rows.append(row)
    return rows


def write(rows: Iterable[Mapping[str, Any]], out: str | Path) -> Path:
    """Write rows as Parquet (`.parquet`) or CSV (any other suffix; the curve as a JSON list)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = [dict(r) for r in rows]
    if out.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), out, compression="zstd")
        return out
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(COLUMNS))
        writer.writeheader()
        for r in rows:
            writer.writerow({**r, **{k: json.dumps(r.get(k, [])) for k in LISTS}})
    return out


class TableError(ValueError):
    """A design table that is missing or cannot be read; the message names the file and the fix."""


# the columns a reader of a table needs (replay groups runs by design and task, and reads their curves)
NEEDED = ("design_id", "task", "status", "curve", "epochs")


def read(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a table written by `write`; raises `TableError` for a missing, garbled or foreign file."""
    path = Path(path)
    fix = f"write one with `pdspace-bench table SWEEP_DIR --out {path}`"
    if not path.is_file():
        raise TableError(f"design table {path} does not exist; {fix}")
    try:
        rows = _read(path)
    except (OSError, ValueError, KeyError, TypeError) as e:  # pyarrow's ArrowInvalid is a ValueError
        reason = " ".join(str(e).split())[:200]
        raise TableError(f"{path} is not a readable design table ({type(e).__name__}: {reason}); {fix}") from None
    missing = sorted({c for r in rows[:1] for c in NEEDED if c not in r})
    if missing:
        raise TableError(f"{path} lacks the column(s) {', '.join(missing)} of a design table; {fix}")
    if not rows:
        raise TableError(f"{path} holds no runs; {fix}")
    return rows


def _read(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    missing = [c for c in NEEDED if rows and c not in rows[0]]
    if missing:
        raise KeyError(f"no column {missing[0]!r}")
    ints, floats = ("seed", "trainable_params", "epochs"), ("budget_fraction", "fraction", "best", "train_s_per_epoch")
    for r in rows:
        r.update({k: json.loads(r[k]) for k in LISTS if k in r})
        r.update({k: int(r[k]) for k in ints if k in r}, **{k: float(r[k]) for k in floats
                                                            if r.get(k) not in (None, "", "None")})
    return rows


def add_parser(sub: Any) -> None:
    """`pdspace-bench table SWEEP_DIR... --out table.parquet`."""
    p = sub.add_parser("table", help="collect finished sweeps into a design table (learning curves)")
    p.add_argument("sweep_dirs", nargs="+", help="sweep or run dirs (searched recursively for result.json)")
    p.add_argument("--out", required=True, help="table.parquet (or .csv)")
    p.add_argument("--relative-to", default=None, help="the dir `source` paths are relative to (default: each "
                                                       "sweep dir's parent)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    """Collect and write; print a one-line summary per task."""
    rows = collect(args.sweep_dirs, args.relative_to)
    if not rows:
        raise SystemExit(f"pdspace-bench: error: no completed run with a design and a curve under {args.sweep_dirs}")
    try:
        path = write(rows, args.out)
    except OSError as e:
        raise SystemExit(f"pdspace-bench: error: {cannot_write(args.out, e, '--out')}") from None
    for task in sorted({r["task"] for r in rows}):
        mine = [r for r in rows if r["task"] == task]
        designs = {r["design_id"] for r in mine}
        print(f"{task}: {len(mine)} runs of {len(designs)} designs, "
              f"{sum(r['status'] == 'pruned' for r in mine)} pruned, best {max(r['best'] for r in mine):.4f}")
    print(f"wrote {path} ({path.stat().st_size:,} bytes)")
