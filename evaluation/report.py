"""report.html: one self-contained page (inline SVG plots, no scripts, no external files).

Every label that names the real rows comes from the metrics (`metrics["job"]["real_rows"]`,
`metrics["evaluation"]`), never from fixed text: a federation evaluates the parties' held-out
rows, `fedsynth evaluate` the table given with --real, and a job without a holdout its
training rows (then the page says so and warns that the scores are optimistic).
"""

from __future__ import annotations

import html
import io
import logging
import math
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import matplotlib
import numpy as np
from matplotlib import font_manager
from matplotlib.axes import Axes
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter, NullLocator

matplotlib.rcParams["svg.fonttype"] = "none"  # text stays text: smaller, searchable
REAL, SYN = "#4c72b0", "#dd8452"
# Fonts with wide coverage (CJK, Cyrillic, ...) put after DejaVu Sans where installed, so that
# matplotlib measures non-Latin column names with real glyphs; the SVG keeps text as text, so
# the browser draws it with its own fonts either way.
_WIDE_FONTS = ("Noto Sans CJK JP", "Noto Sans CJK SC", "Noto Sans", "Source Han Sans",
               "WenQuanYi Zen Hei", "WenQuanYi Micro Hei", "Droid Sans Fallback", "Unifont",
               "Arial Unicode MS")
_GLYPH_WARNING = r"(?s)Glyph \d+ .*missing from"


def _font_family() -> list[str]:
    have = {f.name for f in font_manager.fontManager.ttflist}
    return ["DejaVu Sans", *[f for f in _WIDE_FONTS if f in have]]


_RC: dict[Any, Any] = {"font.family": "sans-serif", "font.sans-serif": _font_family()}


@contextmanager
def _plotting() -> Iterator[None]:
    """Matplotlib settings of the report's plots; a glyph that no installed font has (e.g. a
    CJK column name on a machine without CJK fonts) is not warned about: the SVG holds the
    text itself, which the browser draws, and the tables hold it as HTML text."""
    with matplotlib.rc_context(_RC), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_GLYPH_WARNING, category=UserWarning)
        yield


def render(metrics: dict[str, Any], *, title: str = "fedsynth evaluation report",
           privacy: dict[str, Any] | None = None,
           runs: Sequence[dict[str, Any]] = ()) -> str:
    """The page for one evaluation; `runs` (several ε) adds a privacy-utility curve."""
    side = real_side(metrics)
    with _plotting():
        parts = [f"<h1>{_e(title)}</h1>", _summary(metrics, privacy, side)]
        if metrics.get("job"):
            parts.append(_job(metrics, side))
        parts += [_similarity(metrics, side), _pairs(metrics, side)]
        if "ml_efficacy" in metrics:
            parts.append(_ml(metrics, side))
        if "bias" in metrics:
            parts.append(_bias(metrics["bias"], side))
        parts.append(_privacy(metrics, privacy, side))
        if metrics.get("evaluation", {}).get("dp"):
            parts.append(_not_released(metrics["evaluation"]))
        if len({r.get("epsilon") for r in runs}) >= 2:
            parts.append(_curve(runs))
        parts.append(_scalability(metrics))
    body = "\n".join(parts)
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>{body}</body></html>\n")


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
h1{font-size:1.6em} h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0;font-size:.9em}
td,th{border:1px solid #ddd;padding:.25em .6em;text-align:right}
th{background:#f4f4f4} td:first-child,th:first-child{text-align:left}
td.text{text-align:left;max-width:40em}
.cards{display:flex;flex-wrap:wrap;gap:1em}
.card{border:1px solid #ddd;border-radius:6px;padding:.6em 1em;min-width:10em;max-width:24em;
background:#fafafa}
.card b{display:block;font-size:1.5em}
.card .why{display:block;font-size:.85em;color:#8a4b00;margin-top:.3em}
.grid{display:flex;flex-wrap:wrap;gap:.5em} .grid svg{width:280px;height:auto}
.wide svg{max-width:100%;height:auto} .note{color:#666;font-size:.85em}
.warn{border:1px solid #e0b252;background:#fff6e0;padding:.6em 1em;border-radius:6px}
.about{color:#666;font-size:.85em} .why{color:#8a4b00}
"""


class _Html(str):
    """Text that is already HTML (escaped where needed): tables put it in as it is, aligned
    right like a number."""


class _HtmlText(_Html):
    """HTML that reads as text: aligned left in a table."""


def render_or_none(metrics: dict[str, Any], **kwargs: Any) -> str | None:
    """`render`, or None (with the trace in the log) when the page cannot be drawn: a drawing
    problem must never cost the job its synthetic table and privacy report."""
    try:
        return render(metrics, **kwargs)
    except Exception as exc:
        logging.getLogger("fedsynth").exception("the report could not be drawn (%s); the other "
                                                "outputs are written", exc)
        metrics["report_error"] = f"{type(exc).__name__}: {exc}"
        return None


def _e(x: object) -> str:
    return html.escape(str(x))


def _f(x: object, digits: int = 3) -> str:
    if isinstance(x, _Html):
        return str(x)
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, (int, np.integer)) and not isinstance(x, bool):
        return f"{int(x):,}"
    if isinstance(x, (float, np.floating)):
        v = float(x)
        if abs(v) >= 1e4:
            return f"{v:,.0f}"
        if 0 < abs(v) < 1e-3:
            return f"{v:.{digits}g}"
        return f"{v:,.{digits}f}"
    return _e(x)


def tick(x: float) -> str:
    """A plain, short number for an axis: 1.2k, 35, 0.5, 0.0001, 2.5M (no exponents)."""
    if not math.isfinite(x):
        return ""
    if x == 0:
        return "0"
    a = abs(x)
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if a >= scale:
            return f"{_plain(x / scale)}{suffix}"
    return _plain(x)


def _plain(x: float) -> str:
    """At most three significant digits, positional (never 1e-05)."""
    return str(np.format_float_positional(float(f"{x:.3g}"), trim="-"))


_TICKS = FuncFormatter(lambda v, _pos: tick(v))


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Numbers aligned right, text left."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(
        f"<td class=text>{_f(v)}</td>" if isinstance(v, _HtmlText) or (
            isinstance(v, str) and not isinstance(v, _Html)) else f"<td>{_f(v)}</td>"
        for v in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _svg(fig: Figure) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    text = buf.getvalue()
    return text[text.index("<svg"):]


def _card(label: str, value: object, note: str = "", why: str = "") -> str:
    return (f"<div class=card>{_e(label)}<b>{_f(value)}</b><span class=note>{_e(note)}</span>"
            + (f"<span class=why>{_e(why)}</span>" if why else "") + "</div>")


def _short(name: str, n: int = 12) -> str:
    return name if len(name) <= n else name[: n - 1] + "…"


# --- which rows are "real" -----------------------------------------------------------------

@dataclass(frozen=True)
class Side:
    """The real side of the comparison, as the metrics describe it."""

    kind: str  # "held_out", "training" or "given" (a table given to `fedsynth evaluate`)
    rows: str  # plural noun for labels: "held-out rows"
    row: str  # singular: "held-out row"
    source: str  # a sentence: which rows exactly

    @property
    def training(self) -> bool:
        return self.kind == "training"


_SIDES = {
    "held_out": ("held-out rows", "held-out row",
                 "the parties' held-out rows (never used for synthesis)"),
    "training": ("training rows", "training row",
                 "the rows used for synthesis (the training rows; no rows were held out)"),
    "given": ("real rows", "real row", "the table given with --real"),
}


def real_side(m: dict[str, Any]) -> Side:
    """Which rows the real side is: an explicit `evaluation.real_side`, else a job without a
    holdout (training rows), else a federation (held-out rows: parties evaluate nothing else),
    else the table given to `fedsynth evaluate`."""
    job: dict[str, Any] = m["job"] if isinstance(m.get("job"), dict) else {}
    ev: dict[str, Any] = m["evaluation"] if isinstance(m.get("evaluation"), dict) else {}
    said = {ev.get("real_side"), job.get("real_side")}
    holdout = job.get("holdout_fraction")
    no_holdout = (isinstance(holdout, (int, float)) and not isinstance(holdout, bool)
                  and holdout <= 0)
    if "training" in said or no_holdout:  # never call training rows held-out
        kind = "training"
    elif said & set(_SIDES):
        kind = next(k for k in ("held_out", "given") if k in said)
    elif ev.get("mode") == "federated":  # a party evaluates its held-out rows only
        kind = "held_out"
    else:
        kind = "given"
    rows, row, source = _SIDES[kind]
    given = str(job.get("real_rows") or ev.get("real_rows") or "")
    if kind == "training" and "held-out" in given:  # contradicted by the data: not shown
        given = ""
    return Side(kind, rows, row, given or source)


def _training_warning(side: Side) -> str:
    if not side.training:
        return ""
    return ("<p class=warn><b>The real side is the training rows</b>, the rows the synthesizer "
            "learnt from (no rows were held out): similarity, machine-learning and distance "
            "scores are optimistic (a synthesizer that copied its input would score "
            "perfectly). Hold rows out (e.g. --holdout 0.2) for a fair evaluation.</p>")


# --- summary and job --------------------------------------------------------------------------

def _tstr_reason(m: dict[str, Any], side: Side) -> str:
    """Why TSTR can score above TRTR here, from the rows each model learnt from; "" when
    TSTR is not above TRTR."""
    ml = m.get("ml_efficacy") or {}
    tstr, trtr = ml.get("tstr_auc"), ml.get("trtr_auc")
    if tstr is None or trtr is None or tstr <= trtr:
        return ""
    parties = _parties(m)
    syn_rows = ml.get("tstr_train_rows", m.get("rows_synthetic"))
    trained = ml.get("trtr_trained_on", "")
    if "half" in trained:
        rows = ml.get("trtr_test_rows") or (m.get("rows_real", 0) / 2)
        each = rows / max(parties, 1)
        real = (f"each TRTR model learnt from about {each:,.0f} {side.rows} (half of "
                + ("one party's" if parties > 1 else "the") + " rows)")
    else:
        real = f"TRTR learnt from {trained or 'other real rows'}"
    return (f"TSTR is above TRTR because of how much each model saw: TSTR learnt from "
            f"{_f(syn_rows)} synthetic rows, {real}. More rows, not better data.")


def _parties(m: dict[str, Any]) -> int:
    p = (m.get("evaluation") or {}).get("parties")
    if isinstance(p, list):
        return max(len(p), 1)
    return int(p) if isinstance(p, int) and p > 0 else 1


def _summary(m: dict[str, Any], privacy: dict[str, Any] | None, side: Side) -> str:
    ev = m.get("evaluation", {})
    dp = bool(ev.get("dp"))
    unc = m.get("uncertainty", {})
    floor = m["tvd"].get("noise_floor") or {}
    cards = [_card(f"{side.rows} evaluated", m["rows_real"], "noisy" if dp else ""),
             _card("synthetic rows", m["rows_synthetic"]),
             _card("2-way TVD", m["tvd"]["2way"], "lower is better" + (
                 f"; noise alone shows {_f(floor.get('2way'))}" if dp else "")),
             _card("histogram similarity", m["similarity"]["histogram"], "1 is best" + (
                 f"; ± {_f(unc.get('similarity.histogram'))}" if dp else ""))]
    if "ml_efficacy" in m:
        ml = m["ml_efficacy"]
        if dp:
            cards.append(_card("TSTR AUC", ml["tstr_auc"],
                               f"± {_f(unc.get('ml_efficacy.tstr_auc'))}"))
        else:
            cards.append(_card("TSTR / TRTR AUC",
                               _Html(f"{_f(ml['tstr_auc'])} / {_f(ml['trtr_auc'])}"),
                               why=_tstr_reason(m, side)))
    p = m["privacy"]
    if dp:
        cards.append(_card(f"{side.rows} with a synthetic twin",
                           p.get("real_exact_match_rate"), "share; 0 is best"))
    else:
        cards.append(_card(f"synthetic rows equal to a {side.row}", p["exact_match_rate"],
                           "share; 0 is best"))
    if p.get("membership_inference_auc") is not None:
        cards.append(_card("membership attack AUC", p["membership_inference_auc"], "0.5 is best"))
    if privacy:
        cards.append(_card("ε spent", privacy.get("epsilon_spent"),
                           f"δ={privacy.get('delta')}"))
    mode = ev.get("mode", "local")
    note = ("Federated evaluation: every party scored the synthetic table against its own rows; "
            "only the sum over parties of each statistic reached the coordinator."
            if mode == "federated" else "Local evaluation.")
    note += f" Real rows: {side.source}."
    if dp:
        note += (f" Differentially private evaluation (ε={ev.get('epsilon')}, "
                 f"δ={ev.get('delta')} per {side.row}): every statistic carried noise, "
                 "numbers are rounded to their noise, ± is a noise standard deviation, and "
                 "what a DP evaluation does not release is listed at the end.")
    return (_training_warning(side) + f"<p class=note>{_e(note)}</p>"
            f"<div class=cards>{''.join(cards)}</div>")


def _job(m: dict[str, Any], side: Side) -> str:
    job = m["job"]
    rows: list[list[object]] = []

    def add(label: str, key: str, shown: object = None) -> None:
        if key in job and job[key] is not None:
            rows.append([label, _HtmlText(_f(job[key] if shown is None else shown))])

    add("parties", "parties")
    add("partition of the rows among the parties", "partition")
    add("threshold t (fewest parties in every sum)", "threshold_t")
    add("colluders c (parties that may collude with the coordinator)", "colluders_c")
    add("channel", "channel", {"secagg": "secure aggregation (secagg)",
                               "plain": "plain (unprotected; simulation only)"}.get(
        str(job.get("channel")), job.get("channel")))
    hf = job.get("holdout_fraction")
    if isinstance(hf, (int, float)) and not isinstance(hf, bool):
        add("holdout fraction", "holdout_fraction",
            f"{hf:.0%} of each party's rows" if hf > 0 else "0: no rows held out")
    add("ε (synthesis)", "epsilon")
    add("δ (synthesis)", "delta")
    rows.append(["real rows of the evaluation", side.source])
    ev = m.get("evaluation", {})
    rows.append(["evaluation", f"DP at ε={ev.get('epsilon')}, δ={ev.get('delta')}"
                 if ev.get("dp") else "exact sums (not differentially private)"])
    if side.training:
        rows.append(["warning", "the real rows are the training rows: scores are optimistic"])
    marg = job.get("marginals")
    if isinstance(marg, list):
        items = "".join(f"<li>{_e(' × '.join(map(str, mk)) if isinstance(mk, list) else mk)}"
                        "</li>" for mk in marg)
        rows.append(["marginals chosen by the synthesizer", _HtmlText(
            f"<details><summary>{len(marg):,} marginals</summary><ul>{items}</ul></details>")])
    vs_train = m.get("tvd_2way_vs_train")
    if isinstance(vs_train, (int, float)):
        rows.append(["2-way TVD against the rows used for synthesis (simulation only; outside "
                     "the privacy guarantee)", _HtmlText(_f(float(vs_train)))])
    return ("<h2>Job settings</h2>" + _table(["setting", "value"], rows))


def _not_released(ev: dict[str, Any]) -> str:
    rows = [[k, v] for k, v in (ev.get("not_released") or {}).items()]
    return ("<h2>Not released by a DP evaluation</h2>" + _table(["measure", "why"], rows)
            + "<p class=note>Noise standard deviation of one count, by kind of statistic: "
            + _e(", ".join(f"{k} {v}" for k, v in (ev.get("noise_sd_per_count") or {}).items()))
            + ".</p>")


# --- columns ----------------------------------------------------------------------------------

def _missing_note(col: dict[str, Any]) -> str:
    shares = []
    for side in ("real", "synthetic"):
        st = col.get(side) or {}
        n = (st.get("count") or 0) + (st.get("missing") or 0)
        if n and st.get("missing"):
            shares.append(f"{side} {st['missing'] / n:.0%}")
    return f" (missing: {', '.join(shares)})" if shares else ""


def _no_values(ax: Axes) -> None:
    ax.text(0.5, 0.5, "no values", ha="center", va="center", transform=ax.transAxes,
            fontsize=10, color="#666")
    ax.set_xticks([])
    ax.set_yticks([])


def _hist_plot(col: dict[str, Any], side: Side) -> str:
    fig = Figure(figsize=(4, 2.6), layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(_short(str(col["name"]), 28) + _missing_note(col), fontsize=9)
    ax.tick_params(labelsize=7)
    d = col.get("display")
    if col.get("no_values"):
        _no_values(ax)
    elif d:
        _numeric_hist(ax, d, side)
    else:
        _category_bars(ax, col, side)
    return _svg(fig)


def _merge_empty_bins(edges: np.ndarray, r: np.ndarray,
                      s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bins of zero width (repeated edges: quantile bins at a point mass, such as many exact
    zeros) have no area to draw a density on: their counts join the next bin of positive
    width (or the previous one at the end)."""
    keep = np.diff(edges) > 0
    if keep.all() or not keep.any():
        return edges, r, s
    r, s = r.copy(), s.copy()
    idx = np.flatnonzero(keep)
    for i in np.flatnonzero(~keep):
        later = idx[idx > i]
        j = int(later[0]) if len(later) else int(idx[-1])
        r[j] += r[i]
        s[j] += s[i]
    return np.append(edges[:-1][keep], edges[-1]), r[keep], s[keep]


def _numeric_hist(ax: Axes, d: dict[str, Any], side: Side) -> None:
    edges, r, s = _merge_empty_bins(np.asarray(d["edges"], float),
                                    np.asarray(d["real"], float),
                                    np.asarray(d["synthetic"], float))
    width = np.diff(edges)
    if not len(width) or not (width > 0).all():
        _no_values(ax)
        return
    if r.sum() <= 0 and s.sum() <= 0:
        _no_values(ax)
        return
    if d.get("density"):
        # bins of different widths: share of values per `unit`, a round width near the typical
        # bin's, so that the heights compare like those of equal bins
        unit = float(_round_unit((edges[-1] - edges[0]) / max(len(width), 1)))
        rh = r / max(r.sum(), 1) / width * unit
        sh = s / max(s.sum(), 1) / width * unit
        ax.set_ylabel(f"share per {tick(unit)}", fontsize=7)
    else:
        # equal bins, except that the end bins stop at the public bounds: each bin's share is
        # scaled to the common width, so a narrower (or wider) end bin is not a dip (or peak)
        common = float(np.median(width))
        rh = r / max(r.sum(), 1) * common / width
        sh = s / max(s.sum(), 1) * common / width
        ax.set_ylabel("share of values" if np.allclose(width, common) else
                      f"share per {tick(common)}", fontsize=7)
    ax.stairs(rh, edges, fill=True, color=REAL, alpha=0.45, label=side.rows)
    ax.stairs(sh, edges, color=SYN, linewidth=1.6, label="synthetic")
    ax.set_xlim(edges[0], edges[-1])
    ax.set_ylim(0, max(float(np.max(rh)), float(np.max(sh)), 1e-12) * 1.15)
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(MaxNLocator(nbins=5))
        axis.set_major_formatter(_TICKS)
    ax.legend(fontsize=6, frameon=False)


def _round_unit(x: float) -> float:
    if x <= 0 or not math.isfinite(x):
        return 1.0
    p = 10.0 ** math.floor(math.log10(x))
    return min((v * p for v in (1, 2, 5, 10)), key=lambda v: abs(math.log(v / x)))


def _category_bars(ax: Axes, col: dict[str, Any], side: Side) -> None:
    r = np.asarray(col["histogram_real"], float)[:-1]  # the last code is "missing"
    s = np.asarray(col["histogram_synthetic"], float)[:-1]
    labels = list(col["bins"])[:-1]
    if r.sum() <= 0 and s.sum() <= 0:
        _no_values(ax)
        return
    r, s = r / max(r.sum(), 1), s / max(s.sum(), 1)
    order = np.argsort(-(r + s), kind="stable")[:12]  # the 12 most frequent
    keep = [i for i in order if r[i] + s[i] > 0]
    x = np.arange(len(keep))
    ax.bar(x - 0.2, r[keep], 0.4, label=side.rows, color=REAL)
    ax.bar(x + 0.2, s[keep], 0.4, label="synthetic", color=SYN)
    names = [_short(str(labels[i]), 10) for i in keep]
    long = len(keep) > 4 or max((len(n) for n in names), default=0) > 6
    ax.set_xticks(x, names, rotation=35 if long else 0, ha="right" if long else "center",
                  fontsize=7)
    ax.yaxis.set_major_formatter(_TICKS)
    ax.set_ylabel("share of values", fontsize=7)
    ax.legend(fontsize=6, frameon=False)


def _approx(v: float, width: float | None) -> str:
    """`v` with the digits its resolution supports: a tenth of the bin `width`, else three
    significant digits."""
    step = width / 10 if width else (10.0 ** (math.floor(math.log10(abs(v))) - 2) if v else 1.0)
    place = math.floor(math.log10(step))
    return f"{round(v, -place):,.{max(0, -place)}f}"


def _stat_cell(st: dict[str, Any], key: str) -> object:
    """A real-side statistic: exact, or "about" with the bin width it was interpolated in."""
    v = st.get(key)
    about = st.get("about") or {}
    if v is None or key not in about:
        return v
    w = about[key]
    width = float(w) if isinstance(w, (int, float)) and w > 0 else None
    what = [f"bin width {tick(width)}" if width else "from bins"]
    if st.get("noisy"):
        what.append("noisy")
    return _Html(f"about {_e(_approx(float(v), width))} "
                 f"<span class=about>({_e(', '.join(what))})</span>")


def _similarity(m: dict[str, Any], side: Side) -> str:
    dp = bool(m.get("evaluation", {}).get("dp"))
    rows, cats = [], []
    stats = ("mean", "std", "min", "q1", "median", "q3", "max")
    for c in m["columns"]:
        for which in ("real", "synthetic"):
            st = c[which]
            label = (side.rows + (" (noisy)" if dp else "")) if which == "real" else "synthetic"
            cells: list[object] = [c["name"] if which == "real" else "", label, st.get("count"),
                                   st.get("missing"), st.get("distinct")]
            if c["kind"] == "numeric" and not st.get("count"):
                cells += ["no values"] + [None] * (len(stats) - 1)
            elif which == "real":
                cells += [_stat_cell(st, k) for k in stats]
            else:
                cells += [st.get(k) for k in stats]
            rows.append(cells)
        if c["kind"] == "categorical":
            top = sorted(c["categories"], key=lambda v: -v["real"])[:12]
            cats.append(f"<h3>{_e(c['name'])}</h3>" + _table(
                ["category", side.rows, "synthetic"], [[v["value"], v["real"], v["synthetic"]]
                                                       for v in top]))
    sim = _table(["column", "histogram similarity", "KS complement"],
                 [[c["name"], "no values: not measured" if c.get("no_values")
                   else c["histogram_similarity"], c.get("ks_complement")]
                  for c in m["columns"]])
    t = m["tvd"]
    floor, unc = t.get("noise_floor"), m.get("uncertainty", {})
    if floor is None:
        tvd = _table(["measure", "value"], [["mean 1-way TVD", t["1way"]],
                                            ["mean 2-way TVD", t["2way"]],
                                            [f"mean 3-way TVD ({t['3way_marginals']} "
                                             + ("marginal)" if t["3way_marginals"] == 1 else
                                                "marginals)"), t["3way"]]])
    else:
        tvd = _table(["measure", "value", "± (noise sd)", "noise alone shows"],
                     [[f"mean {w[0]}-way TVD", t[w], unc.get(f"tvd.{w}"), floor.get(w)]
                      for w in ("1way", "2way", "3way")])
    skipped = t.get("not_measured")
    skip_note = (f"<p class=note>Not measured: {_e(', '.join(skipped['columns']))} "
                 f"({_e(skipped['why'])}).</p>" if skipped else "")
    plots = "".join(_hist_plot(c, side) for c in m["columns"])
    shown = {str((c.get("display") or {}).get("bins")) for c in m["columns"]
             if c.get("display")}
    hist_note = ("Numeric columns: " + "; ".join(sorted(shown)) + ". " if shown else "") + (
        "Categorical columns: share of each category, the 12 most frequent.")
    if dp:
        exact_note = (f"The synthetic table's statistics are exact (it is public). The "
                      f"{side.rows}' statistics are noisy (DP): quartiles come from the "
                      "evaluation bins ('about', with the bin's width), mean and std from the "
                      "evaluation bins with the synthetic values' mean in each bin; minimum, "
                      "maximum and distinct counts are not released.")
    else:
        exact_note = (f"The synthetic table's statistics are exact (it is public). The "
                      f"{side.rows}' mean and std are exact (sums); their quantiles, minimum and "
                      "maximum are exact where shown plainly (integer columns with a small "
                      "range, one fine bin per value; a minimum or maximum at a public bound, "
                      "counted exactly), otherwise 'about' with the width of the fine bin they "
                      "were interpolated in; distinct counts are given only where exact.")
    return (
        "<h2>Statistical similarity</h2>" + tvd
        + f"<p class=note>Binning: {_e(t['binning'])}. Similarity = 1 − TVD of the column's "
        "histogram; KS complement = 1 − the largest gap between the CDFs (fine bins).</p>"
        + skip_note + sim
        + "<h3>Distributions, real vs synthetic</h3>"
        + f"<p class=note>{_e(hist_note)}</p><div class=grid>" + plots + "</div>"
        + f"<h3>Column statistics, side by side</h3><p class=note>{_e(exact_note)}</p>"
        + _table(["column", "rows", "count", "missing", "distinct", *stats], rows)
        + ("<h3>Category counts (most frequent 12)</h3>" + "".join(cats) if cats else ""))


# --- pairs ------------------------------------------------------------------------------------

def _heatmaps(m: dict[str, Any], side: Side) -> str:
    return _svg(heatmap_figure(m, side))


def heatmap_figure(m: dict[str, Any], side: Side) -> Figure:
    """Cramér's V of every pair, real and synthetic on one 0-1 scale (one colour bar), and
    their difference on a symmetric scale as wide as its largest value, labelled."""
    noisy = " (noisy)" if m.get("evaluation", {}).get("dp") else ""
    names = [c["name"] for c in m["columns"]]
    d = len(names)
    mats = {k: np.full((d, d), np.nan) for k in ("real", "synthetic")}
    for p in m["pairs"]:
        a, b = names.index(p["columns"][0]), names.index(p["columns"][1])
        for k in mats:
            v = p[f"cramers_v_{k}"]
            mats[k][a, b] = mats[k][b, a] = np.nan if v is None else v
    for k in mats:
        np.fill_diagonal(mats[k], 1.0)
    diff = mats["synthetic"] - mats["real"]
    np.fill_diagonal(diff, np.nan)
    big = float(np.nanmax(np.abs(diff))) if np.isfinite(diff).any() else 0.0
    big = big if big > 0 else 0.01
    labels = [_short(str(n), 12) for n in names]
    size = 7 if d <= 12 else 5
    fig = Figure(figsize=(13, 4.2), layout="constrained")
    axes = fig.subplots(1, 3)
    shared = Normalize(0.0, 1.0)
    for ax, title, mat, cmap, norm in (
            (axes[0], f"{side.rows}{noisy}", mats["real"], "viridis", shared),
            (axes[1], "synthetic", mats["synthetic"], "viridis", shared),
            (axes[2], f"synthetic − {side.rows}{noisy}", diff, "RdBu_r", Normalize(-big, big))):
        im = ax.imshow(mat, cmap=cmap, norm=norm)
        ax.set_title(title, fontsize=10)
        ax.set_xticks(range(d), labels, rotation=60, ha="right", fontsize=size)
        ax.set_yticks(range(d), labels, fontsize=size)
        if ax is axes[0]:
            continue  # real and synthetic share one colour bar, after the synthetic map
        cb = fig.colorbar(im, ax=list(axes[:2]) if ax is axes[1] else ax, fraction=0.046,
                          pad=0.02)
        cb.set_label("Cramér's V (0: independent, 1: determined)" if ax is axes[1] else
                     f"difference in Cramér's V (scale ±{tick(big)})", fontsize=7)
        cb.ax.tick_params(labelsize=7)
        cb.ax.yaxis.set_major_formatter(_TICKS)
    return fig


def _pairs(m: dict[str, Any], side: Side) -> str:
    pairs = sorted(m["pairs"], key=lambda p: p["contingency_similarity"] or 0)
    rows = [[" ~ ".join(p["columns"]), "no values: not measured" if p.get("note") else
             p["contingency_similarity"], p["cramers_v_real"],
             p["cramers_v_synthetic"], p["correlation_real"], p["correlation_synthetic"],
             p["correlation_similarity"]] for p in pairs]
    s = m["similarity"]
    return ("<h2>Pairs of columns</h2>"
            + _table(["mean over pairs", "value"],
                     [["contingency similarity (1 − 2-way TVD)", s["contingency"]],
                      ["correlation similarity (1 − |Δr|/2, numeric pairs)", s["correlation"]]])
            + "<h3>Association (Cramér's V on the evaluation bins)</h3><div class=wide>"
            + (_heatmaps(m, side) if m["pairs"] else "") + "</div>"
            + "<details open><summary>every pair, least similar first</summary>"
            + _table(["pair", "contingency similarity", f"Cramér's V {side.rows}",
                      "Cramér's V synthetic", f"Pearson r {side.rows}", "Pearson r synthetic",
                      "correlation similarity"], rows)
            + "</details>")


# --- models -----------------------------------------------------------------------------------

def _ml(m: dict[str, Any], side: Side) -> str:
    ml = m["ml_efficacy"]
    dp = bool(m.get("evaluation", {}).get("dp"))
    reason = "" if dp else _tstr_reason(m, side)
    trained = ml.get("trtr_trained_on")
    if trained and "half" in trained:
        trained = f"one half of each party's {side.rows}"
    tstr_on = (f"synthetic table ({_f(ml['tstr_train_rows'])} rows)"
               if ml.get("tstr_train_rows") is not None else "synthetic table")
    rows = [["TSTR (train synthetic, test real)", tstr_on, f"all {side.rows}", ml["tstr_auc"],
             ml["tstr_f1"], ml["tstr_parties"],
             _HtmlText(f"<span class=why>{_e(reason)}</span>") if reason else ""],
            ["TRTR (train real, test real)", trained or side.rows,
             f"the other half of the {side.rows}" if trained and "half" in trained
             else f"all {side.rows}", ml["trtr_auc"], ml["trtr_f1"], ml["trtr_parties"], ""]]
    why = "".join(f"<p class=note>{_e(k)}: {_e(v)}</p>"
                  for k, v in (ml.get("not_released") or {}).items())
    imp = ml["feature_importance"]
    plot = ""
    if len(imp) == 2:
        names = list(imp["trtr"])
        fig = Figure(figsize=(6, 0.4 * len(names) + 1), layout="constrained")
        ax = fig.add_subplot()
        y = np.arange(len(names))
        ax.barh(y - 0.2, [imp["trtr"][n] for n in names], 0.4, label="TRTR", color=REAL)
        ax.barh(y + 0.2, [imp["tstr"][n] for n in names], 0.4, label="TSTR", color=SYN)
        ax.set_yticks(y, [_short(str(n), 20) for n in names], fontsize=8)
        ax.xaxis.set_major_formatter(_TICKS)
        ax.set_xlabel("drop in AUC when the column is shuffled", fontsize=8)
        ax.legend(fontsize=8)
        plot = "<div class=wide>" + _svg(fig) + "</div>"
    return (f"<h2>Machine-learning efficacy</h2><p>Target <b>{_e(ml['target'])}</b>, positive "
            f"class <b>{_e(ml['positive_class'])}</b>; {_e(ml['model'])}; F1 at threshold "
            f"{ml['f1_threshold']}.</p>"
            + _table(["model", "trained on", "tested on", "ROC AUC", "F1", "parties", "note"],
                     rows)
            + "<p>Feature-importance agreement (Spearman rank correlation of "
            f"{_e(ml['importance'])}): <b>{_f(ml['feature_importance_agreement'])}</b></p>" + plot
            + ("<p class=note>In a federation no party holds the pooled rows: TRTR is each "
               "party's own model, and the parties' score histograms are summed.</p>"
               if _parties(m) > 1 and not dp else "") + why)


def _bias(b: dict[str, Any], side: Side) -> str:
    rows = []
    for label, key in ((f"{side.rows} (labels)", "real_data"), ("synthetic data (labels)",
                                                                "synthetic_data"),
                       ("TRTR model (predictions)", "trtr_model"),
                       ("TSTR model (predictions)", "tstr_model")):
        v = b.get(key)
        if v:
            rows.append([label, v["demographic_parity_difference"],
                         v.get("equal_opportunity_difference"), v["disparate_impact_ratio"]])
    return (f"<h2>Bias</h2><p>Sensitive attribute <b>{_e(b['sensitive'])}</b>; groups "
            f"{_e(', '.join(b['groups']))}.</p>"
            + _table(["", "demographic parity difference", "equal opportunity difference",
                      "disparate impact ratio"], rows)
            + "<p class=note>Differences: largest minus smallest positive (prediction, true "
            "positive) rate across groups, 0 is parity; ratio: smallest over largest, 1 is "
            "parity.</p>")


# --- privacy ----------------------------------------------------------------------------------

def _distance_axes(ax: Axes, xlabel: str) -> None:
    """Log distance axis from 0.0001 (rows at distance 0, exact copies, show as the curve's
    start) to 1, ticked at powers of ten with plain labels."""
    ax.set_xscale("log")
    ax.set_xlim(1e-4, 1.05)
    ax.set_xticks([1e-4, 1e-3, 1e-2, 1e-1, 1.0])
    ax.xaxis.set_major_formatter(_TICKS)
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel("share of rows", fontsize=8)
    ax.set_ylim(0, 1.02)
    ax.yaxis.set_major_formatter(_TICKS)
    ax.tick_params(labelsize=7)


def _privacy(m: dict[str, Any], privacy: dict[str, Any] | None, side: Side) -> str:
    p = m["privacy"]
    ledgers = m.get("ledger_epsilon_per_party")
    if "real_rows_with_exact_match" in p:
        return _dp_privacy(p, privacy, ledgers, side)
    read = bool(m.get("evaluation", {}).get("synthesis_rows_read"))
    if read:  # distances to the rows the synthesizer used
        ref, to_ref, probe = ("the rows used for synthesis", "the closest row used for synthesis",
                              f"the {side.rows}")
    else:  # the evaluated rows split in two: one half is the reference of the other
        ref, to_ref, probe = (f"half of the {side.rows}", f"the closest row of one half of the "
                              f"{side.rows}", f"the other half of the {side.rows}")
    mia = p.get("membership_inference_auc")
    rows = [[f"exact matches (synthetic rows equal to a {side.row})", p["exact_matches"]],
            ["exact-match rate", p["exact_match_rate"]],
            [f"median distance of synthetic rows to {to_ref}", p["dcr_synthetic_median"]],
            [f"median distance of {probe} to {to_ref}", p["dcr_real_median"]],
            ["DCR ratio (synthetic / real; ≥ 1 is good)", p["dcr_ratio"]],
            [f"neighbours' privacy: share of synthetic rows closer to {ref} than 95% of "
             f"{probe} are (0.05 expected)", p["closer_than_real_share"]],
            ["membership-inference attack AUC (0.5 is ideal)",
             mia if mia is not None else p.get("membership_inference", "not measured")]]
    edges = np.asarray(p["dcr_bin_edges"])
    fig = Figure(figsize=(6, 2.6), layout="constrained")
    ax = fig.add_subplot()
    mids = np.sqrt(np.maximum(edges[:-1], 1e-5) * edges[1:])
    for key, label, color in (("dcr_histogram_real", probe, REAL),
                              ("dcr_histogram_synthetic", "synthetic rows", SYN)):
        h = np.asarray(p[key], float)
        if h.sum():
            ax.plot(mids, np.cumsum(h) / h.sum(), label=label, color=color)
    _distance_axes(ax, f"distance to {to_ref} (Gower)")
    if ax.get_lines():
        ax.legend(fontsize=8)
    compared = ("Matches and distances compare the synthetic rows with the rows the evaluation "
                f"read: {side.source}"
                + (", and the rows used for synthesis" if read else
                   "; the rows used for synthesis were not read, so a synthetic row that copies "
                   "one of them is not counted here") + ".")
    return ("<h2>Privacy</h2>" + _table(["measure", "value"], rows)
            + f"<p class=note>{_e(compared)} {_e(p['distance'])}."
            + (f" Membership inference: {_e(p['membership_inference'])}." if mia is not None
               else "") + "</p>"
            + "<div class=wide>" + _svg(fig) + "</div>" + _spent(privacy, ledgers))


def _dp_privacy(p: dict[str, Any], privacy: dict[str, Any] | None,
                ledgers: dict[str, float] | None, side: Side) -> str:
    rows = [[f"{side.rows} equal to a synthetic row", p["real_rows_with_exact_match"]],
            [f"share of {side.rows} equal to a synthetic row", p["real_exact_match_rate"]],
            [f"median distance of {side.rows} to the closest synthetic row",
             p["dcr_real_to_synthetic_median"]]]
    rows += [[k, f"not released: {v}"] for k, v in (p.get("not_released") or {}).items()]
    edges = np.asarray(p["dcr_bin_edges"])
    fig = Figure(figsize=(6, 2.6), layout="constrained")
    ax = fig.add_subplot()
    mids = np.sqrt(np.maximum(edges[:-1], 1e-5) * edges[1:])
    h = np.asarray(p["dcr_histogram_real_to_synthetic"], float)
    if h.sum():
        ax.plot(mids, np.cumsum(h) / h.sum(), label=side.rows, color=REAL)
        ax.legend(fontsize=8)
    _distance_axes(ax, "distance to the closest synthetic row (Gower)")
    return ("<h2>Privacy</h2>" + _table(["measure", "value"], rows)
            + f"<p class=note>{_e(p['distance'])}. Membership inference: "
            f"{_e(p['membership_inference'])}.</p>"
            + "<div class=wide>" + _svg(fig) + "</div>" + _spent(privacy, ledgers))


def _spent(privacy: dict[str, Any] | None, ledgers: dict[str, float] | None) -> str:
    dp = ""
    if privacy:
        # as each party reported from its own ledger, else as the coordinator accounted
        per = ledgers or privacy.get("epsilon_spent_per_party_ledger") or privacy.get(
            "epsilon_asked_of_party") or {}
        dp = ("<h3>Differential privacy actually spent</h3>"
              + _table(["", "ε", "δ"], [["job (accountant)", privacy.get("epsilon_spent"),
                                          privacy.get("delta")]]
                       + [[f"party {k} (its ledger)", v, privacy.get("delta")]
                          for k, v in per.items()])
              + f"<p class=note>{_e(privacy.get('accounting', ''))}</p>")
    return dp


# --- privacy-utility curve --------------------------------------------------------------------

def _curve(runs: Sequence[dict[str, Any]]) -> str:
    runs = sorted(runs, key=lambda r: r["epsilon"])
    eps = [float(r["epsilon"]) for r in runs]
    fig = Figure(figsize=(6, 3), layout="constrained")
    ax = fig.add_subplot()
    tvd = [r["tvd_2way"] for r in runs]
    ax.plot(eps, tvd, "o-", color=REAL, label="2-way TVD")
    if min(eps) > 0 and max(eps) / min(eps) >= 4:  # log x, ticked at the runs' ε only
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticks(eps, [tick(e) for e in eps])
    ax.set_xlabel("ε", fontsize=9)
    top = max((v for v in tvd if v is not None), default=0.0)
    ax.set_ylim(0, min(1.0, max(0.1, 1.3 * top)))  # TVD lives in [0, 1]: from 0, never zoomed
    ax.yaxis.set_major_formatter(_TICKS)
    ax.set_ylabel("2-way TVD (lower is better)", fontsize=8)
    if all(r.get("tstr_auc") is not None for r in runs):
        ax2 = ax.twinx()
        auc = [r["tstr_auc"] for r in runs]
        ax2.plot(eps, auc, "s--", color=SYN, label="TSTR AUC")
        ax2.set_ylim(min(0.5, min(auc) - 0.05), 1.0)  # 0.5: a coin, 1: perfect
        ax2.yaxis.set_major_formatter(_TICKS)
        ax2.set_ylabel("TSTR AUC", fontsize=8)
        lines, labels = ax.get_legend_handles_labels()
        more, names = ax2.get_legend_handles_labels()
        ax2.legend(lines + more, labels + names, fontsize=8, loc="lower right")
    else:
        ax.legend(fontsize=8, loc="lower right")
    return ("<h2>Privacy-utility curve</h2><div class=wide>" + _svg(fig) + "</div>"
            + _table(["ε", "2-way TVD", "TSTR AUC", "membership attack AUC", "source"],
                     [[_Html(tick(float(r["epsilon"]))), r["tvd_2way"], r.get("tstr_auc"),
                       r.get("membership_inference_auc"), r.get("source", "")] for r in runs]))


def _scalability(m: dict[str, Any]) -> str:
    steps = m.get("steps") or []
    ev = m.get("evaluation", {})
    rows = [[s["step"], s["seconds"], s.get("peak_rss_mb"), s.get("rows"),
             s.get("rows_per_second")] for s in steps]
    for k, v in (ev.get("seconds") or {}).items():
        rows.append([f"evaluation: {k}", v, None, None, None])
    return ("<h2>Scalability</h2>" + _table(["step", "seconds", "peak memory (MB)", "rows",
                                             "rows per second"], rows)
            + "<p class=note>Peak memory is the coordinator process's resident set during the "
            "step; the parties' processes are not included.</p>")
