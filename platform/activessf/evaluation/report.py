"""Comparisons and the report laid out like the paper: Tables I-III and Fig. 3, as Markdown and HTML."""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path
from typing import Optional

import numpy as np

from .stats import corrected_ttest, mark, paired_ttest

SUMMARY = (("accuracy", "Accuracy (%)"), ("pr_auc", "PR-AUC (%)"), ("f1", "F1-score (%)"))


def load_run(path: str | Path) -> dict:
    path = Path(path)
    file = path / "metrics.json" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"{file} not found: is {path} the output of `activessf finetune`?")
    return json.loads(file.read_text())


def split_scores(run: dict, key: str, cls: Optional[str] = None) -> dict[tuple[int, int], float]:
    """(repeat, fold) -> the run's ``key`` on that split; with ``cls``, that class's PR-AUC on the splits
    whose held-out part has the class (records from before repeats are repeat 0)."""
    values = {(m.get("repeat", 0), m["fold"]): m[key] if cls is None else m["pr_auc_per_class"][cls]
              for m in run["folds"]}
    return {s: float(v) for s, v in values.items() if v is not None}


def compare_splits(sa: dict, sb: dict, k: int, level: float) -> dict:
    """B against A on the splits both have, paired by (repeat, fold): the paper's paired t-test (``p``,
    ``paper_significant``) and the corrected resampled t-test over n = repeats x k splits with test/train
    = 1/(k-1) (``corrected``), which decides ``significant``."""
    splits = sorted(set(sa) & set(sb))
    fa, fb = [sa[s] for s in splits], [sb[s] for s in splits]
    t, corrected = paired_ttest(fa, fb), corrected_ttest(fa, fb, test_train_ratio=1.0 / (k - 1))
    return {"a": float(np.mean(fa)), "b": float(np.mean(fb)), "n": len(splits), **t, "paper_significant": t["p"] < level,
            "corrected": corrected, "significant": corrected["p"] < level}


def compare_runs(a: dict, b: dict, level: float = 0.05) -> dict:
    """B against A over the same (repeat, fold) splits: each summary metric and each class's PR-AUC (on the
    splits that hold the class out, when there are two or more), by :func:`compare_splits`."""
    if a["folds_digest"] != b["folds_digest"]:
        raise ValueError("the two runs used different folds: rerun one with --folds <the other>/folds.json")
    splits = sorted(split_scores(a, "accuracy"))
    if splits != sorted(split_scores(b, "accuracy")):
        raise ValueError("the two runs cover different splits: rerun one with --folds <the other>/folds.json")
    k = max(f for _, f in splits) + 1
    out = {"baseline": a.get("name"), "candidate": b.get("name"), "level": level, "k": k,
           "repeats": len({r for r, _ in splits}), "decided_by": "corrected", "metrics": {}, "per_class": {}}
    for key, _ in SUMMARY:
        out["metrics"][key] = compare_splits(split_scores(a, key), split_scores(b, key), k, level)
    for c in a["classes"]:
        sa, sb = split_scores(a, "pr_auc", c), split_scores(b, "pr_auc", c)
        if len(set(sa) & set(sb)) >= 2:
            out["per_class"][c] = compare_splits(sa, sb, k, level)
    return out


def format_comparison(c: dict) -> str:
    """The comparison as text: the corrected resampled t-test's p (* below the level: it decides) and 95%
    interval of B - A, and the paper's paired t-test p beside it (docs/finetune.md)."""
    lines = [f"{c['candidate']} vs {c['baseline']}, paired by split: {c['repeats']} x {c['k']} folds",
             f"corrected p: Nadeau-Bengio corrected resampled t-test, which decides (* p < {c['level']}), and its 95% "
             "interval of B-A; paired p: the paper's paired t-test over folds (Table II), which overstates certainty",
             f"{'metric':<16} {'A':>8} {'B':>8} {'B-A':>8} {'corrected p':>13} {'95% interval':>18} {'paired p':>9}"]
    for key, r in list(c["metrics"].items()) + [(f"PR-AUC {k}", v) for k, v in c["per_class"].items()]:
        lo, hi = r["corrected"]["ci"]
        lines.append(f"{key:<16} {100 * r['a']:>8.2f} {100 * r['b']:>8.2f} {100 * r['mean_diff']:>+8.2f} "
                     f"{r['corrected']['p']:>11.4f}{' *' if r['significant'] else '  '} "
                     f"{f'[{100 * lo:+.2f}, {100 * hi:+.2f}]':>18} {r['p']:>9.4f}")
    return "\n".join(lines)


def pm(stats: dict) -> str:
    return "n/a" if stats["mean"] is None else f"{100 * stats['mean']:.2f} ± {100 * stats['std']:.2f}"


def format_table2(runs: dict[str, dict], pairs: Optional[dict[str, str]] = None, level: float = 0.05,
                  labels: Optional[dict[str, str]] = None) -> str:
    """Table II: Accuracy / PR-AUC / F1 (mean ± std, %), * where a run beats its baseline with corrected p < level.

    ``labels`` (run name -> row label) picks the rows and their order; default: every run by name."""
    pairs = pairs or {}
    labels = labels or {name: name for name in runs}
    lines = ["| Method | " + " | ".join(h for _, h in SUMMARY) + " |", "|---" * (len(SUMMARY) + 1) + "|"]
    for name, label in labels.items():
        run = runs[name]
        cells = []
        base = runs.get(pairs.get(name, ""))
        cmp = compare_runs(base, run, level) if base is not None else None
        for key, _ in SUMMARY:
            r = cmp["metrics"][key] if cmp else None
            star = mark(r["corrected"]["p"], level) if r and r["mean_diff"] > 0 else ""
            cells.append(pm(run["summary"][key]) + star)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_table1(runs: dict[str, dict]) -> str:
    """Table I: per-class PR-AUC (mean ± std, %); rare classes marked †, common *."""
    first = next(iter(runs.values()))
    classes, groups = first["classes"], first.get("class_groups", {})
    head = [c + ("†" if groups.get(c) == "rare" else "*" if groups.get(c) == "common" else "") for c in classes]
    lines = ["| Method | " + " | ".join(head) + " |", "|---" * (len(classes) + 1) + "|"]
    for name, run in runs.items():
        lines.append(f"| {name} | " + " | ".join(pm(run["summary"]["pr_auc_per_class"][c]) for c in classes) + " |")
    return "\n".join(lines)


def format_table3(rows: list[dict], runs: dict[str, dict]) -> str:
    """Table III: ablation rows with component check marks."""
    comps = ["ViT", "MAE", "CRF", "ASS"]
    lines = ["| " + " | ".join(comps) + " | " + " | ".join(h for _, h in SUMMARY) + " |",
             "|---" * (len(comps) + len(SUMMARY)) + "|"]
    for row in rows:
        run = runs[row["name"]]
        ticks = ["✓" if row["components"].get(c) else "" for c in comps]
        lines.append("| " + " | ".join(ticks) + " | " + " | ".join(pm(run["summary"][k]) for k, _ in SUMMARY) + " |")
    return "\n".join(lines)


def figure3(runs: dict[str, dict], path: Path, pair: Optional[tuple[str, str]] = None) -> Path:
    """Confusion matrices of two runs side by side and a per-class PR-AUC bar chart (Fig. 3)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(pair) if pair else list(runs)[-2:]
    classes = runs[names[0]]["classes"]
    fig, axes = plt.subplots(1, len(names) + 1, figsize=(5.2 * (len(names) + 1), 4.6))
    for ax, name in zip(axes, names):
        cm = np.array(runs[name]["summary"]["confusion"], float)
        cm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
        ax.imshow(cm, cmap="Purples", vmin=0, vmax=1)
        ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=7)
        ax.set_yticks(range(len(classes)), classes, fontsize=7)
        for i in range(len(classes)):
            for j in range(len(classes)):
                if cm[i, j] >= 0.005:
                    ax.text(j, i, f"{cm[i, j]:.2f}", ha="center", va="center", fontsize=6,
                            color="white" if cm[i, j] > 0.5 else "black")
        ax.set_title(f"{name}\n(rows: true, normalised)", fontsize=9)
    ax = axes[-1]
    width = 0.8 / max(len(runs), 1)
    for k, (name, run) in enumerate(runs.items()):
        means = [run["summary"]["pr_auc_per_class"][c]["mean"] or 0.0 for c in classes]
        ax.bar(np.arange(len(classes)) + k * width, means, width, label=name)
    ax.set_xticks(np.arange(len(classes)) + width * (len(runs) - 1) / 2, classes, rotation=90, fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_title("per-class PR-AUC", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(runs: dict[str, dict], out: str | Path, title: str, pairs: Optional[dict[str, str]] = None,
                 ablation: Optional[list[dict]] = None, level: float = 0.05,
                 table2: Optional[dict[str, str]] = None,
                 run_dirs: Optional[dict[str, str | Path]] = None) -> dict[str, Path]:
    """report.md and a self-contained report.html (figures inlined) in ``out``; ``table2`` as
    ``labels`` of :func:`format_table2`. With ``run_dirs`` (run name -> its `finetune` output), Fig. 4:
    per-class PR curves and the most confidently misclassified cells of the runs Fig. 3 shows
    (``pictures/<run>_pr_curves.png``, ``pictures/<run>_misclassified.png``)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pair = _fig_pair(runs, pairs)
    fig = figure3(runs, out / "figure3.png", pair)
    pictures = run_pictures_for(list(pair) if pair else list(runs)[-2:], run_dirs or {}, out)
    sections = [("Table I. Per-class PR-AUC (%)", format_table1(runs)),
                ("Table II. Accuracy, PR-AUC and F1 (%), mean ± std over the splits; * p < "
                 f"{level} (corrected resampled t-test; the paper's paired p is in the comparisons below) against "
                 "the baseline", format_table2(runs, pairs, level, table2))]
    if ablation:
        sections.append(("Table III. Ablation", format_table3(ablation, runs)))
    comparisons = [compare_runs(runs[b], runs[a], level) for a, b in (pairs or {}).items()]
    md = [f"# {title}", ""]
    for head, table in sections:
        md += [f"## {head}", "", table, ""]
    for c in comparisons:
        md += ["```", format_comparison(c), "```", ""]
    md += ["## Fig. 3. Confusion matrices and per-class PR-AUC", "", f"![Fig. 3]({fig.name})", ""]
    if pictures:
        md += [f"## {FIG4}", ""] + [f"![{name}]({p.relative_to(out)})" for name, p in pictures] + [""]
    (out / "report.md").write_text("\n".join(md))
    (out / "report.html").write_text(_html(title, sections, comparisons, fig, pictures))
    (out / "report.json").write_text(json.dumps({"runs": {k: v["summary"] for k, v in runs.items()},
                                                 "comparisons": comparisons}, indent=1))
    return {"md": out / "report.md", "html": out / "report.html", "figure": fig}


FIG4 = ("Fig. 4. Per-class precision-recall (pooled over the held-out splits) and the most confidently "
        "misclassified cells (true, predicted, confidence)")


def run_pictures_for(names: list[str], run_dirs: dict, out: Path) -> list[tuple[str, Path]]:
    """PR curves and misclassified galleries of the runs ``names`` that have an output in ``run_dirs``, drawn
    from their predictions into ``out/pictures``: [(caption, path), ...]."""
    from .pictures import PICTURES, run_pictures

    drawn = []
    for name in names:
        if name not in run_dirs:
            continue
        slug = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
        if run_pictures(run_dirs[name], out / "pictures", prefix=f"{slug}_") is not None:
            drawn += [(f"{name}: {pic[:-4].replace('_', ' ')}", out / "pictures" / f"{slug}_{pic}") for pic in PICTURES]
    return drawn


def _fig_pair(runs: dict, pairs: Optional[dict]) -> Optional[tuple[str, str]]:
    if pairs:
        a, b = next(iter(pairs.items()))
        if a in runs and b in runs:
            return b, a
    return None


def _html(title: str, sections: list, comparisons: list, fig: Path, pictures: list = ()) -> str:
    def table(md: str) -> str:
        rows = [r.strip("|").split("|") for r in md.splitlines() if not r.startswith("|---")]
        head = "".join(f"<th>{html.escape(c.strip())}</th>" for c in rows[0])
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c.strip())}</td>" for c in r) + "</tr>" for r in rows[1:])
        return f"<table><tr>{head}</tr>{body}</table>"

    img = base64.b64encode(fig.read_bytes()).decode()
    parts = [f"<h1>{html.escape(title)}</h1>"]
    for head, md in sections:
        parts += [f"<h2>{html.escape(head)}</h2>", table(md)]
    for c in comparisons:
        parts.append(f"<pre>{html.escape(format_comparison(c))}</pre>")
    parts += ["<h2>Fig. 3. Confusion matrices and per-class PR-AUC</h2>", f'<img src="data:image/png;base64,{img}">']
    if pictures:
        parts.append(f"<h2>{html.escape(FIG4)}</h2>")
    for name, path in pictures:
        data = base64.b64encode(path.read_bytes()).decode()
        parts += [f"<h3>{html.escape(name)}</h3>", f'<img src="data:image/png;base64,{data}">']
    style = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px}img{max-width:100%}")
    return f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>" \
           f"<style>{style}</style></head><body>{''.join(parts)}</body></html>"
