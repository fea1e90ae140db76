"""One self-contained HTML report: evaluation tables, the scoring sheet, every prototype's
top-k patches and the local explanations. Images are referenced by relative paths, so the
folder opens from disk (file://) without a server and can be moved as a whole."""
from __future__ import annotations

import html
import pathlib
from collections.abc import Sequence

from pipnet_tf.io import atomic_write_text

STYLE = """
body{font-family:DejaVu Sans,Arial,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:24px}h2{font-size:19px;margin-top:32px;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:3px 8px;
text-align:left}th{background:#f2f2f2}
img{max-width:100%;image-rendering:pixelated;border:1px solid #ddd}
.proto{margin:6px 0}.muted{color:#777}nav a{margin-right:14px}
.disabled,.disabled td{color:#999}.proto.disabled img{opacity:.6;filter:grayscale(1)}
.flag{color:#b02020;font-weight:bold}
"""


def _table(headers: Sequence[str], rows: Sequence[Sequence]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>"
                   for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _evaluation_html(evaluation: dict) -> str:
    parts = []
    test = evaluation.get("test", {})
    scalar = [(k, _fmt(v)) for k, v in test.items() if not isinstance(v, (list, dict))]
    if scalar:
        parts.append("<h3>Test set</h3>" + _table(["metric", "value"], scalar))
    if "before_pruning" in evaluation and "after_pruning" in evaluation:
        before, after = evaluation["before_pruning"], evaluation["after_pruning"]
        keys = [k for k in ("top1_accuracy", "global_size", "local_size_all_classes") if k in before]
        parts.append("<h3>Pruning</h3>" + _table(
            ["metric", "before", "after"], [(k, _fmt(before[k]), _fmt(after.get(k))) for k in keys]))
    ood = evaluation.get("ood")
    if ood:
        rows = [("ID test (TPR)", "", f"{100 * ood['tpr']:.1f}%")]
        rows += [(name, r["num_images"], f"{100 * r['accepted']:.1f}%")
                 for name, r in ood["sources"].items()]
        parts.append(f"<h3>Out-of-distribution (FPR{int(ood['percentile'])})</h3>"
                     + _table(["source", "images", "accepted as in-distribution"], rows))
    purity = evaluation.get("purity")
    if purity:
        rows = []
        for split, variants in purity.items():
            for name, v in variants.items():
                if isinstance(v, dict):
                    rows.append((split, name, v["num_prototypes"], f"{v['mean']:.3f} ± {v['std']:.3f}",
                                 f"{v['purest_part_mean']:.3f} ± {v['purest_part_std']:.3f}"))
        parts.append("<h3>Prototype part purity</h3>" + _table(
            ["images", "patches", "prototypes", "most frequent part", "purest part"], rows))
    return "\n".join(parts)


def _audit_html(audit: Sequence[dict]) -> str:
    """The prototype audit table (rows in report order), linking to the pictures."""
    with_purity = any(row["purity"] is not None for row in audit)
    head = ["prototype", "status", "classes (weight)"]
    head += ["purity (part)"] if with_purity else []
    head += ["background patches"]
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    lines = [f"<table><tr>{cells}</tr>"]
    for row in audit:
        p = row["prototype"]
        values = [f'<a href="#p{p}">P{p}</a>', "disabled" if row["disabled"] else "enabled",
                  html.escape(", ".join(f"{name} ({w:.2f})" for name, w in row["classes"]))]
        if with_purity:
            values.append("–" if row["purity"] is None else
                          f"{row['purity']:.2f} ({html.escape(row['part'] or 'no part')})")
        background = (f"{row['background_patches']}/{row['patches_with_box']}"
                      if row["patches_with_box"] else "–")
        if row["mostly_background"]:
            background = f'<span class="flag">{background} mostly background</span>'
        values.append(background)
        css = ' class="disabled"' if row["disabled"] else ""
        lines.append(f"<tr{css}>" + "".join(f"<td>{v}</td>" for v in values) + "</tr>")
    return "".join(lines) + "</table>"


def write_report(out_dir: str | pathlib.Path, title: str, evaluation: dict | None,
                 scoring_sheet_png: str | None, scoring_sheet: dict[str, list],
                 prototype_pngs: dict[int, str], local_pngs: Sequence[tuple[str, str]],
                 audit: Sequence[dict] = ()) -> pathlib.Path:
    """Writes `out_dir/index.html`; all paths are relative to `out_dir`. Returns its path.

    `audit` (`pipnet_tf.explain.audit.prototype_audit`) adds the prototype table and sets
    the order of the prototype pictures; disabled prototypes are shown greyed.
    """
    out_dir = pathlib.Path(out_dir)
    esc = html.escape
    body = [f"<h1>{esc(title)}</h1>",
            ('<nav><a href="#evaluation">Evaluation</a><a href="#sheet">Scoring sheet</a>'
             '<a href="#prototypes">Prototypes</a><a href="#local">Local explanations</a></nav>')]
    body.append('<h2 id="evaluation">Evaluation</h2>')
    body.append(_evaluation_html(evaluation) if evaluation else
                '<p class="muted">No evaluation.json for this run (run trainers.evaluate).</p>')
    body.append('<h2 id="sheet">Scoring sheet</h2>')
    body.append('<p class="muted">Per class, its prototypes (top training patch) and weights; '
                'a class score is Σ presence × weight.</p>')
    if scoring_sheet_png:
        body.append(f'<img src="{esc(scoring_sheet_png)}" alt="scoring sheet">')
    rows = [(name, ", ".join(f"P{p} ({w:.2f})" for p, w in entries)) for name, entries in scoring_sheet.items()]
    body.append(_table(["class", "prototypes (weight)"], rows))
    disabled = {row["prototype"] for row in audit if row["disabled"]}
    body.append(f'<h2 id="prototypes">Prototypes ({len(prototype_pngs) - len(disabled)} '
                f'relevant{f", {len(disabled)} disabled" if disabled else ""})</h2>')
    body.append('<p class="muted">Each row: the prototype\'s top training-image patches, '
                'with their presence scores.</p>')
    order = [row["prototype"] for row in audit if row["prototype"] in prototype_pngs]
    order += sorted(set(prototype_pngs) - set(order))
    if audit:
        sorted_by = ("sorted by part purity, least pure first"
                     if any(row["purity"] is not None for row in audit) else "sorted by id")
        body.append(
            f'<p class="muted">Finding prototypes to disable ({sorted_by}): a prototype is '
            'flagged <span class="flag">mostly background</span> when more than half of '
            'its top patches have their centre outside the object\'s bounding box. '
            'Disabled prototypes (greyed) add nothing to any score; '
            '<code>python -m trainers.edit --model RUN --disable P,… --out RUN2</code> '
            'disables more.</p>')
        body.append(_audit_html(audit))
    for p in order:
        css = "proto disabled" if p in disabled else "proto"
        body.append(f'<div class="{css}" id="p{p}"><img src="{esc(prototype_pngs[p])}" '
                    f'alt="prototype {p}"></div>')
    body.append(f'<h2 id="local">Local explanations ({len(local_pngs)} images)</h2>')
    for name, png in local_pngs:
        body.append(f'<h3>{esc(name)}</h3><img src="{esc(png)}" alt="explanation of {esc(name)}">')
    page = (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{esc(title)}</title>"
            f"<style>{STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
    path = out_dir / "index.html"
    atomic_write_text(path, page)
    return path
