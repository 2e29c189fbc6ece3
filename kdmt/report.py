"""One table and one plot from the JSON reports of `kdmt eval`: quality against speed, side by side."""

from __future__ import annotations

import json
from pathlib import Path

from kdmt.errors import KdmtError
from kdmt.evaluate import describe, model_role, short_names
from kdmt.metrics import BOOTSTRAP_SAMPLES, SIGNIFICANT, paired_bootstrap

PRIVATE = ("hyps", "refs", "tgt_lang")  # what rows carry for the paired tests and report.json leaves out


def load_reports(paths: list[Path]) -> list[dict]:
    reports = []
    for path in paths:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise KdmtError(f"{path}: not a kdmt eval report ({e})") from None
        if not isinstance(data, list) or not all(isinstance(r, dict) and "bleu" in r for r in data):
            raise KdmtError(f"{path}: not a kdmt eval report (write one with kdmt eval --report)")
        for r in data:
            hyps, refs = r.get("hyps", []), r.get("refs", [])
            lines = [x for x in (hyps, refs) if isinstance(x, list) and all(isinstance(line, str) for line in x)]
            if len(lines) < 2 or len(hyps) != len(refs):
                raise KdmtError(
                    f"{path}: {r.get('checkpoint')}'s translations and references are not two lists of as many lines"
                )
        reports += data
    return reports


def build_rows(reports: list[dict]) -> list[dict]:
    """One row per checkpoint and language pair (eval --pair): quality from its widest beam, speed greedy and
    with that beam."""
    names = short_names([r["checkpoint"] for r in reports])
    rows: dict[tuple[str, str | None], dict] = {}
    for r in reports:
        pair = r.get("pair")
        row = rows.setdefault(
            (r["checkpoint"], pair),
            {
                "model": names[r["checkpoint"]],
                **({"pair": pair} if pair else {}),
                "checkpoint": r["checkpoint"],
                "made_with": describe(r["made_with"]),
                "role": r.get("role") or model_role(r["made_with"]),  # a report of an older kdmt: its record's
                "parameters": r["parameters"],
                "size_mb": round(r.get("size_bytes", 0) / 2**20, 1),
                "device": r["device"],
                "test": r["test_src"],
            },
        )
        if r["beam"] == 1:
            row["sentences_per_s_greedy"], row["bleu_greedy"] = r["sentences_per_s"], r["bleu"]
        if r["beam"] >= row.get("beam", 0):
            row.update(beam=r["beam"], bleu=r["bleu"], chrf=r["chrf"], chrfpp=r.get("chrfpp"))
            row.update(sentences_per_s_beam=r["sentences_per_s"], **{key: r.get(key) for key in PRIVATE})
    return list(rows.values())


def public(row: dict) -> dict:
    """A row as report.json takes it: without the translations and references."""
    return {key: value for key, value in row.items() if key not in PRIVATE}


def paired_tests(base: dict, rows: list[dict], key: str, samples: int) -> None:
    """Set `key` of each row to its paired bootstrap test against the base row (evaluate.paired_bootstrap,
    `samples` resamples), where both have translations of the same references (reports of kdmt eval before
    the tests have none); to None where there is no test (or `samples` is 0)."""
    testable = [r for r in rows if base["hyps"] and r["hyps"] and r["refs"] == base["refs"]]
    for row in rows:
        row[key] = None  # no test, unless one below
    if not samples or not testable:
        return
    test = paired_bootstrap(base["hyps"], [r["hyps"] for r in testable], base["refs"], base["tgt_lang"], samples)
    for i, row in enumerate(testable):
        if abs(test.comparisons[i]["bleu"].score - row["bleu"]) > 0.01:
            raise KdmtError(
                f"{row['model']}: its translations score {test.comparisons[i]['bleu'].score:.2f} BLEU, its report "
                f"{row['bleu']:.2f} (BLEU's tokenizer is not the one kdmt eval had): run kdmt eval again"
            )
        row[key] = test.against(i, base["model"])


def compare_with_teacher(rows: list[dict], samples: int = BOOTSTRAP_SAMPLES) -> str | None:
    """Add each row's BLEU and chrF difference, its paired bootstrap test (paired_tests) and its beam-search
    speed-up against the first teacher among the rows of its language pair; the first such teacher's name, or
    None when there is no teacher."""
    teachers: dict[str | None, dict] = {}
    for row in rows:
        if row["role"] == "teacher":
            teachers.setdefault(row.get("pair"), row)
    for row in rows:
        if (teacher := teachers.get(row.get("pair"))) is not None:
            row["bleu_vs_teacher"] = round(row["bleu"] - teacher["bleu"], 2)
            row["chrf_vs_teacher"] = round(row["chrf"] - teacher["chrf"], 2)
            row["speedup_vs_teacher"] = round(row["sentences_per_s_beam"] / teacher["sentences_per_s_beam"], 2)
    for pair, teacher in teachers.items():
        others = [r for r in rows if r.get("pair") == pair and r is not teacher]
        paired_tests(teacher, others, "vs_teacher", samples)
    return next(iter(teachers.values()))["model"] if teachers else None


def compare_with_baseline(rows: list[dict], name: str, samples: int = BOOTSTRAP_SAMPLES) -> None:
    """Add each student's BLEU and chrF difference and its paired bootstrap test (paired_tests) against the
    row named `name` of its language pair: every row but the teachers and the baseline itself."""
    baselines = {row.get("pair"): row for row in rows if row["model"] == name}
    if not baselines:
        names = ", ".join(dict.fromkeys(row["model"] for row in rows))
        raise KdmtError(f"--baseline {name}: no model of that name in the reports (they have {names})")
    for pair, baseline in baselines.items():
        students = [r for r in rows if r.get("pair") == pair and r is not baseline and r["role"] != "teacher"]
        for row in students:
            row["bleu_vs_baseline"] = round(row["bleu"] - baseline["bleu"], 2)
            row["chrf_vs_baseline"] = round(row["chrf"] - baseline["chrf"], 2)
        paired_tests(baseline, students, "vs_baseline", samples)


def untested(rows: list[dict], against: str) -> list[str]:
    """The rows compared `against` the teacher or baseline without a paired test."""
    return [row["model"] for row in rows if f"vs_{against}" in row and row[f"vs_{against}"] is None]


def difference(row: dict, metric: str, against: str) -> str:
    """A row's difference on a metric against the teacher or baseline, as the table shows it: Δ, with a
    paired test ± half its 95% confidence interval, the p-value, and * when significant."""
    if (test := row.get(f"vs_{against}")) is not None:
        c = test[metric]
        return f"{c['delta']:+.2f} ±{c['delta_ci']:.2f} p={c['p_value']:.4f}{'*' if c['significant'] else ''}"
    delta = row.get(f"{metric}_vs_{against}")
    return "" if delta is None else f"{delta:+.2f}"


def significance_note(test: dict) -> str:
    """What the table's differences with a paired test say, in one line."""
    return (
        f"Δ ± half the 95% confidence interval of the difference, p: sacrebleu's paired bootstrap resampling "
        f"({test['samples']} resamples, seed {test['seed']}); * p < {SIGNIFICANT}: significant; "
        "without: not significant"
    )


def table(rows: list[dict], baseline: str | None = None) -> tuple[list[str], list[list[str]]]:
    """The report's table as text: its headers and one list of cells per row; a column of the language pair
    when the reports name pairs (eval --pair), and the differences against the baseline when one is named."""
    pairs = any(r.get("pair") for r in rows)
    headers = ["model", *(["pair"] if pairs else []), "BLEU", "chrF", "chrF++", "BLEU greedy", "params", "MB"]
    headers += ["sent/s greedy", f"sent/s beam {rows[0]['beam']}", "ΔBLEU", "ΔchrF", "× speed"]
    headers += [f"ΔBLEU vs {baseline}", f"ΔchrF vs {baseline}"] if baseline else []
    body = []
    for r in rows:
        greedy = "sentences_per_s_greedy" in r
        body.append(
            [
                r["model"],
                *([r.get("pair") or ""] if pairs else []),
                f"{r['bleu']:.2f}",
                f"{r['chrf']:.2f}",
                "" if r.get("chrfpp") is None else f"{r['chrfpp']:.2f}",
                f"{r['bleu_greedy']:.2f}" if greedy else "",
                f"{r['parameters']:,}",
                f"{r['size_mb']:.1f}",
                f"{r['sentences_per_s_greedy']:,.1f}" if greedy else "",
                f"{r['sentences_per_s_beam']:,.1f}",
                difference(r, "bleu", "teacher"),
                difference(r, "chrf", "teacher"),
                f"{r['speedup_vs_teacher']:.2f}" if "speedup_vs_teacher" in r else "",
                *([difference(r, "bleu", "baseline"), difference(r, "chrf", "baseline")] if baseline else []),
            ]
        )
    return headers, body


def eval_table(reports: list[dict], names: dict[str, str], compared: bool) -> tuple[list[str], list[list[str]]]:
    """kdmt eval's table as text, as `table`: a row per report (EvalReport.to_dict), with the differences
    against the first when `compared`."""
    headers = ["model", "BLEU", "chrF", "chrF++", "params", "sent/s", "tok/s"]
    headers += ["ΔBLEU", "ΔchrF"] if compared else []
    body = [
        [
            names[r["checkpoint"]],
            f"{r['bleu']:.2f}",
            f"{r['chrf']:.2f}",
            f"{r['chrfpp']:.2f}",
            f"{r['parameters']:,}",
            f"{r['sentences_per_s']:,.1f}",
            f"{r['tokens_per_s']:,.0f}",
            *([difference(r, "bleu", "first"), difference(r, "chrf", "first")] if compared else []),
        ]
        for r in reports
    ]
    return headers, body


def tested_on(rows: list[dict]) -> str:
    """The test sets of the rows, by file name (several with several language pairs)."""
    return ", ".join(dict.fromkeys(Path(row["test"]).name for row in rows))


def markdown(headers: list[str], body: list[list[str]]) -> str:
    """A markdown table, numbers aligned right (the * of a significant difference as it is)."""
    align = ["---"] + ["---:"] * (len(headers) - 1)
    lines = [headers, align, *([cell.replace("*", "\\*") for cell in cells] for cells in body)]
    return "".join("| " + " | ".join(cells) + " |\n" for cells in lines)


def plot(rows: list[dict], path: Path) -> None:
    """BLEU against sentences/s (with each row's beam), one labelled point per model, as a PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise KdmtError("the plot needs matplotlib: pip install matplotlib") from None
    from kdmt.files import atomic_path

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for row in rows:
        x, y = row["sentences_per_s_beam"], row["bleu"]
        ax.scatter([x], [y], s=40)
        label = f"{row['model']} {row['pair']}" if row.get("pair") else row["model"]
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set_xlabel(f"sentences/s, beam {rows[0]['beam']} ({rows[0]['device']})")
    ax.set_ylabel("sacreBLEU")
    ax.set_title(f"quality against speed: {tested_on(rows)}")
    ax.grid(True, alpha=0.3)
    ax.margins(x=0.25, y=0.08)  # room for the labels
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
