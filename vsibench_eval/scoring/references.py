"""Published VSI-Bench results beside ours: the reference rows shipped in references.csv (one row per published
result, each with its source), which of them were made under a run's protocol, our value minus theirs, and
whether theirs lies inside our 95 % interval; as markdown, CSV and the log's lines.

A published overall is either the macro mean of the task scores (VSI-Bench's official rule) or the mean over
questions (`overall_kind` micro: Spatial-R1's published 41.81, VLMEvalKit's tables); it is compared with the same
kind of our overalls. Rows under another protocol, or an unknown one, are shown apart as not comparable.

Builds on the task names (metric.py) and the table layouts (tables.py).
"""

import csv
import io
from pathlib import Path

from vsibench_eval.errors import DataError
from vsibench_eval.metric import TASKS
from vsibench_eval.scoring.tables import LAYOUTS, OVERALL, bootstrap_note, format_csv, markdown_lines, table_columns

REFERENCES_FILE = Path(__file__).with_name("references.csv")
COLUMNS = ("model", "hub_id", *TASKS, "overall", "overall_kind", "harness", "protocol", "frames", "source")
OVERALL_KINDS = ("macro", "micro", "unknown")


def load_references(path: Path = REFERENCES_FILE) -> list[dict]:
    """The published rows: {"model", "hub_id", "tasks": {task: percent}, "overall", "overall_kind", "harness",
    "protocol", "frames" (int or None), "source"}; a task the source does not give is absent."""
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if tuple(reader.fieldnames or ()) != COLUMNS:
            raise DataError(f"{path}: expected the columns {', '.join(COLUMNS)}")
        return [reference_row(row, f"{path}: row {number}") for number, row in enumerate(reader, 2)]


def reference_row(row: dict, where: str) -> dict:
    def number(field: str, kind=float):
        try:
            return kind(row[field]) if row[field] else None
        except ValueError:
            raise DataError(f"{where}: {field}: not a number: {row[field]!r}") from None

    for field in ("model", "overall", "harness", "protocol", "source"):
        if not row[field]:
            raise DataError(f"{where}: {field}: empty")
    if row["overall_kind"] not in OVERALL_KINDS:
        raise DataError(
            f"{where}: overall_kind: expected one of {', '.join(OVERALL_KINDS)}, got {row['overall_kind']!r}"
        )
    tasks = {task: number(task) for task in TASKS}
    return {
        "model": row["model"],
        "hub_id": row["hub_id"],
        "tasks": {task: value for task, value in tasks.items() if value is not None},
        "overall": number("overall"),
        "overall_kind": row["overall_kind"],
        "harness": row["harness"],
        "protocol": row["protocol"],
        "frames": number("frames", int),
        "source": row["source"],
    }


def is_model(reference: dict, model_name: str) -> bool:
    """Whether a run's model (a Hub id or a local folder) is the reference's: the same Hub id, or a folder named
    like the Hub id's last part or like the published model."""
    name = model_name.rstrip("/").lower()
    base = name.rsplit("/", 1)[-1]
    hub_id = reference["hub_id"].lower()
    same_hub_name = bool(hub_id) and base == hub_id.rsplit("/", 1)[-1]
    return bool(name) and (name == hub_id or same_hub_name or base == reference["model"].lower())


def difference(ours: float, bounds: list[float] | None, published: float) -> dict:
    """Our value minus the published one, and whether the published one lies inside our interval."""
    inside = None if bounds is None else bounds[0] <= published <= bounds[1]
    return {"ours": ours, "published": published, "diff": ours - published, "inside": inside}


def compare_with(summary: dict, reference: dict) -> dict:
    """Per task and overall, difference() of our summary (report.summarize()) against one published row; the
    overall against our micro mean where the published overall is the mean over questions."""
    ci = summary.get("ci") or {}
    tasks = {
        task: difference(summary["tasks"][task], ci.get("tasks", {}).get(task), value)
        for task, value in reference["tasks"].items()
        if task in summary["tasks"]
    }
    key = "micro" if reference["overall_kind"] == "micro" else "overall"
    return {"tasks": tasks, "overall": difference(summary[key], ci.get(key), reference["overall"]) | {"kind": key}}


def split_by_protocol(references: list[dict], protocols: set) -> tuple[list[dict], list[dict]]:
    """The rows made under one of `protocols`, and the others."""
    same = [reference for reference in references if reference["protocol"] in protocols]
    return same, [reference for reference in references if reference["protocol"] not in protocols]


# ---------------------------------------------------------------- formatting


def column_entries(compared: dict, columns: list[tuple[str, str]]) -> list[dict | None]:
    """compare_with()'s entries in the table's column order; None where the published row has no value."""
    return [compared["overall"] if key == OVERALL else compared["tasks"].get(key) for _, key in columns]


def difference_cell(entry: dict | None) -> str:
    if entry is None:
        return "-"
    mark = "" if entry["inside"] is None else " in" if entry["inside"] else " out"
    return f"{entry['diff']:+.2f}{mark}"


def published_cells(reference: dict, columns: list[tuple[str, str]]) -> list[str]:
    def cell(key: str) -> str:
        if key == OVERALL:
            kind = "" if reference["overall_kind"] == "macro" else f" ({reference['overall_kind']})"
            return f"{reference['overall']:.2f}{kind}"
        return f"{reference['tasks'][key]:.2f}" if key in reference["tasks"] else "-"

    return [cell(key) for _, key in columns]


def reference_section(
    runs: list[tuple[str, dict, str | None]], references: list[dict], layout: str = "spatial_r1"
) -> str:
    """Markdown after a table of our runs, `runs` being (name, summarize(), protocol or None): the published rows
    under a run's protocol, each followed by every such run's difference from it, then the others apart."""
    columns = LAYOUTS[layout]
    header = ["Model", *(title for title, _ in columns), "harness", "frames"]
    protocols = {protocol for _, _, protocol in runs if protocol}
    same, others = split_by_protocol(references, protocols)
    sources: list[str] = []

    def cited(reference: dict) -> str:
        if reference["source"] not in sources:
            sources.append(reference["source"])
        return f"{reference['model']} [{sources.index(reference['source']) + 1}]"

    def extras(reference: dict) -> list[str]:
        return [reference["harness"], str(reference["frames"] or "?")]

    lines = []
    if same:
        body = []
        for reference in same:
            body.append([cited(reference), *published_cells(reference, columns), *extras(reference)])
            for name, summary, protocol in runs:
                if protocol == reference["protocol"]:
                    entries = column_entries(compare_with(summary, reference), columns)
                    body.append([f"{name} - published", *map(difference_cell, entries), "", ""])
        lines += [f"Published under the same protocol ({', '.join(sorted(protocols))}):", *markdown_lines(header, body)]
        boot = next((summary["bootstrap"] for _, summary, _ in runs if "bootstrap" in summary), None)
        lines += [
            "",
            'Rows "- published": our value minus the published one; in / out: the published value lies inside / '
            f"outside our 95% interval ({bootstrap_note(boot) if boot else 'no interval'}). An overall marked "
            "(micro) is the mean over questions and is compared with our micro mean.",
        ]
    else:
        unknown = [name for name, _, protocol in runs if not protocol]
        why = (
            f"the protocol of {', '.join(unknown)} is unknown (no config.json beside the results)"
            if unknown
            else (f"no published row was made under protocol {', '.join(sorted(protocols))}")
        )
        lines.append(f"No published row is comparable: {why}.")
    if others:
        body = [[cited(r), *published_cells(r, columns), *extras(r), r["protocol"]] for r in others]
        lines += ["", "Not comparable: published under another or an unknown protocol, shown for reference only:"]
        lines += markdown_lines([*header, "protocol"], body)
    lines += ["", "Sources:", *(f"[{number}] {source}" for number, source in enumerate(sources, 1))]
    return "\n".join(lines)


def csv_with_references(
    runs: list[tuple[str, dict, str | None]], references: list[dict], layout: str = "spatial_r1"
) -> str:
    """Our runs' CSV table (tables.format_csv) with the published rows below, in one table: columns `row`
    (ours, published, difference, inside our 95% interval, not comparable), `overall_kind`, `harness`,
    `protocol`, `frames` and `source` added; per run of a published row's protocol a difference row and an
    inside-interval row (yes / no)."""
    rows = [(name, summary) for name, summary, _ in runs]
    columns = table_columns(rows, layout)
    ours = list(csv.reader(io.StringIO(format_csv(rows, layout))))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*ours[0], "row", "overall_kind", "harness", "protocol", "frames", "source"])
    for row, (_, _, protocol) in zip(ours[1:], runs, strict=True):
        writer.writerow([*row, "ours", "", "", protocol or "", "", ""])
    same, others = split_by_protocol(references, {protocol for _, _, protocol in runs if protocol})
    for reference in same + others:
        about = [reference[key] for key in ("overall_kind", "harness", "protocol")]
        about += [reference["frames"] or "", reference["source"]]
        values = [reference["overall"] if key == OVERALL else reference["tasks"].get(key) for _, key in columns]
        kind = "published" if reference in same else "not comparable"
        writer.writerow([reference["model"], *("" if v is None else f"{v:.2f}" for v in values), "", "", kind, *about])
        for name, summary, protocol in runs:
            if reference in same and protocol == reference["protocol"]:
                entries = column_entries(compare_with(summary, reference), columns)
                label = f"{name} - {reference['model']}"
                diffs = ["" if e is None else f"{e['diff']:.2f}" for e in entries]
                inside = ["" if e is None or e["inside"] is None else "yes" if e["inside"] else "no" for e in entries]
                writer.writerow([label, *diffs, "", "", "difference", *about])
                writer.writerow([label, *inside, "", "", "inside our 95% interval", *about])
    return out.getvalue().rstrip("\n")


def model_lines(summary: dict, model_name: str, protocol: str, references: list[dict]) -> list[str]:
    """The log's lines on the published rows of this run's model: the difference and the interval mark under the
    run's protocol, else why they are not comparable."""
    lines = []
    for reference in references:
        if not is_model(reference, model_name):
            continue
        where = f"published {reference['model']} ({reference['harness']}, protocol {reference['protocol']}, " + (
            f"{reference['frames']} frames): " if reference["frames"] else "frames not stated): "
        )
        if reference["protocol"] != protocol:
            lines.append(
                where + f"overall {reference['overall']:.2f}; not comparable with this run's protocol {protocol}; "
                f"source: {reference['source']}"
            )
            continue
        overall = compare_with(summary, reference)["overall"]
        kind = "micro" if overall["kind"] == "micro" else "macro"
        inside = {None: "", True: ", inside our 95% interval", False: ", outside our 95% interval"}[overall["inside"]]
        lines.append(
            where + f"overall ({kind}) {reference['overall']:.2f}, ours {overall['ours']:.2f}, "
            f"difference {overall['diff']:+.2f}{inside}; source: {reference['source']}"
        )
    return lines
