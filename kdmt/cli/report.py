"""kdmt report: teacher beside students, from kdmt eval reports."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from kdmt.cli.common import command, err, print_table
from kdmt.cli.params import BootstrapSamples
from kdmt.files import write_text
from kdmt.metrics import BOOTSTRAP_SAMPLES
from kdmt.report import (
    build_rows,
    compare_with_baseline,
    compare_with_teacher,
    load_reports,
    markdown,
    plot,
    public,
    significance_note,
    table,
    tested_on,
    untested,
)


@command("report")
def report_cmd(
    reports: Annotated[list[Path], typer.Argument(help="JSON files written by kdmt eval --report (greedy and beam).")],
    out_dir: Annotated[Path, typer.Option("--out-dir", "-o", help="Where report.json and report.png go.")],
    markdown_out: Annotated[bool, typer.Option("--markdown", help="Also print the table as markdown.")] = False,
    baseline: Annotated[
        str | None,
        typer.Option(
            help="The model (by its name in the table) every student is also compared with, e.g. a student "
            "trained on references."
        ),
    ] = None,
    bootstrap_samples: BootstrapSamples = BOOTSTRAP_SAMPLES,
) -> None:
    """Teacher beside students: one table (BLEU, chrF, chrF++, size, speed greedy and beam, each model's
    difference from the teacher and from --baseline, with sacrebleu's paired bootstrap test) and a plot of
    BLEU against sentences/s, from kdmt eval reports.

    Example: kdmt report work/eval-beam5.json work/eval-greedy.json -o work --baseline student-baseline
    """
    rows = build_rows(load_reports(reports))
    teacher = compare_with_teacher(rows, bootstrap_samples)
    if baseline:
        compare_with_baseline(rows, baseline, bootstrap_samples)
    headers, body = table(rows, baseline)
    if markdown_out:
        print(markdown(headers, body), end="")
    print_table(headers, body, f"kdmt report: {tested_on(rows)} ({rows[0]['device']})")
    if teacher:
        against = "the first teacher of each pair" if any("pair" in r for r in rows) else teacher
        err.print(f"ΔBLEU, ΔchrF and × speed (beam {rows[0]['beam']}) are against {against}", highlight=False)
    if baseline:
        err.print(f"ΔBLEU and ΔchrF vs {baseline}: every student against {baseline}", highlight=False)
    if test := next((r.get(f"vs_{k}") for r in rows for k in ("teacher", "baseline") if r.get(f"vs_{k}")), None):
        err.print(significance_note(test), highlight=False)
    for against in ("teacher", "baseline"):
        if missing := untested(rows, against):
            err.print(
                f"no paired test against the {against} for {', '.join(missing)}: --bootstrap-samples 0, or no "
                "translations in the reports (kdmt eval before the tests), or another test set",
                highlight=False,
            )
    write_text(out_dir / "report.json", json.dumps([public(r) for r in rows], indent=2) + "\n")
    plot(rows, out_dir / "report.png")
    err.print(f"wrote {out_dir / 'report.json'} and {out_dir / 'report.png'}")
