"""The clinician-facing report: one self-contained HTML file plus the PNG figures beside it.

Figures are built as numpy mosaics (heart-centred model-grid crops with coloured overlays) and
written with matplotlib (``Agg``); the HTML embeds each as ``data:image/png;base64`` so it opens
anywhere without its folder. Every text that comes from data is HTML-escaped. No identifiers: the
study is named by its key only.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

import numpy as np

from cmrfm.constants import Label

#: Overlay colours (RGB 0..1) per internal label.
LABEL_COLOURS: dict[int, tuple[float, float, float]] = {
    Label.LV: (0.95, 0.25, 0.25),
    Label.MYO: (0.25, 0.85, 0.35),
    Label.RV: (0.25, 0.5, 1.0),
    Label.INFARCT: (1.0, 0.9, 0.1),
    Label.MVO: (0.9, 0.2, 0.9),
    Label.LA: (1.0, 0.6, 0.1),
    Label.RA: (0.1, 0.9, 0.9),
}
#: Overlay opacity.
ALPHA = 0.4
#: Pixels between mosaic tiles.
GAP = 2
#: Tiles smaller than this are enlarged by an integer factor.
MIN_TILE_PX = 96
#: Display names and units of the measurement table rows.
ROWS: tuple[tuple[str, str, str], ...] = (
    ("lv_edv_ml", "LV end-diastolic volume", "mL"),
    ("lv_esv_ml", "LV end-systolic volume", "mL"),
    ("lv_sv_ml", "LV stroke volume", "mL"),
    ("lv_ef_pct", "LV ejection fraction", "%"),
    ("lv_mass_g", "LV mass (ED)", "g"),
    ("rv_edv_ml", "RV end-diastolic volume", "mL"),
    ("rv_esv_ml", "RV end-systolic volume", "mL"),
    ("rv_sv_ml", "RV stroke volume", "mL"),
    ("rv_ef_pct", "RV ejection fraction", "%"),
    ("lv_edv_ml_m2", "LV EDV index", "mL/m²"),
    ("lv_esv_ml_m2", "LV ESV index", "mL/m²"),
    ("lv_mass_g_m2", "LV mass index", "g/m²"),
    ("rv_edv_ml_m2", "RV EDV index", "mL/m²"),
    ("rv_esv_ml_m2", "RV ESV index", "mL/m²"),
)


def _grey(image: np.ndarray) -> np.ndarray:
    """``(H, W)`` normalised image -> ``(H, W, 3)`` display grey in [0, 1]."""
    g = np.clip(np.asarray(image, np.float32), 0.0, 1.0)
    return np.repeat(g[..., None], 3, axis=-1)


def overlay(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """A grey image ``(H, W)`` with labels ``(H, W)`` blended in colour -> ``(H, W, 3)``."""
    rgb = _grey(image)
    for label, colour in LABEL_COLOURS.items():
        where = labels == label
        if where.any():
            rgb[where] = (1 - ALPHA) * rgb[where] + ALPHA * np.asarray(colour)
    return rgb


def heat(image: np.ndarray, values: np.ndarray, vmax: float | None = None) -> np.ndarray:
    """A grey image with a heat map (``values`` scaled to ``vmax``) blended in -> ``(H, W, 3)``."""
    from matplotlib import colormaps

    v = np.asarray(values, np.float32)
    top = vmax if vmax and vmax > 0 else (float(v.max()) or 1.0)
    colour = colormaps["inferno"](np.clip(v / top, 0, 1))[..., :3]
    weight = np.clip(v / top, 0, 1)[..., None] * 0.8
    return (1 - weight) * _grey(image) + weight * colour


def mosaic(rows: list[list[np.ndarray]]) -> np.ndarray:
    """Tiles ``(H, W, 3)`` arranged in rows (rows padded to the longest) -> one image."""
    factor = max(1, MIN_TILE_PX // rows[0][0].shape[0])
    if factor > 1:  # small model grids are enlarged (nearest) for reading
        rows = [[np.repeat(np.repeat(t, factor, axis=0), factor, axis=1) for t in row] for row in rows]
    h, w = rows[0][0].shape[:2]
    ncols = max(len(r) for r in rows)
    out = np.ones((len(rows) * (h + GAP) - GAP, ncols * (w + GAP) - GAP, 3), np.float32)
    for i, row in enumerate(rows):
        for j, tile in enumerate(row):
            out[i * (h + GAP) : i * (h + GAP) + h, j * (w + GAP) : j * (w + GAP) + w] = tile
    return out


def save_png(image: np.ndarray, path: Path) -> Path:
    """Writes an RGB float image as PNG."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    plt.imsave(path, np.clip(image, 0, 1))
    return path


def ed_es_figure(run: Any, ed: int, es: int, path: Path) -> Path:
    """Every slice at ED (top row) and ES (bottom row) with the segmentation overlaid."""
    rows = []
    for t in dict.fromkeys((ed, es)):
        images = run.grid_images(t)  # (Z, H, W)
        rows.append([overlay(images[z], run.grid_labels[:, :, z, t]) for z in range(images.shape[0])])
    return save_png(mosaic(rows), path)


def uncertainty_figure(run: Any, frame: int, path: Path) -> Path:
    """Every slice of one frame: overlay (top) and summed foreground uncertainty (bottom)."""
    images = run.grid_images(frame)  # (Z, H, W)
    fg = [c for c, label in enumerate(run.label_ids) if label > 0]
    unc = run.uncertainty[frame][:, fg].astype(np.float32).sum(axis=1)  # (Z, H, W)
    vmax = float(np.percentile(unc, 99.5)) if unc.size else 1.0
    top = [overlay(images[z], run.grid_labels[:, :, z, frame]) for z in range(images.shape[0])]
    bottom = [heat(images[z], unc[z], vmax) for z in range(images.shape[0])]
    return save_png(mosaic([top, bottom]), path)


def series_figure(run: Any, path: Path, frame: int = 0) -> Path:
    """Every slice of one frame (LGE, long axis, maps): image (top) and overlay (bottom)."""
    images = run.grid_images(frame)
    top = [_grey(images[z]) for z in range(images.shape[0])]
    bottom = [overlay(images[z], run.grid_labels[:, :, z, frame]) for z in range(images.shape[0])]
    return save_png(mosaic([top, bottom]), path)


def volume_curve_figure(m: dict[str, Any], path: Path) -> Path:
    """LV and RV volume against frame, ED and ES marked."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    lv, rv = m.get("lv_volume_curve_ml") or [], m.get("rv_volume_curve_ml") or []
    fig, ax = plt.subplots(figsize=(5, 3), dpi=100)
    frames = np.arange(len(lv))
    ax.plot(frames, lv, "o-", color=LABEL_COLOURS[Label.LV], label="LV")
    ax.plot(frames, rv, "s-", color=LABEL_COLOURS[Label.RV], label="RV")
    for key, style in (("ed_frame", "--"), ("es_frame", ":")):
        if m.get(key) is not None:
            ax.axvline(m[key], color="grey", linestyle=style, label=key[:2].upper())
    ax.set_xlabel("frame")
    ax.set_ylabel("volume (mL)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.1f}"
    return html.escape(str(value))


def _fmt3(value: Any) -> str:
    return "—" if value is None else f"{float(value):.3f}"


def _table(m: dict[str, Any]) -> str:
    flags = m.get("flags") or {}
    lines = [
        "<table><tr><th>Measurement</th><th>Value</th><th>Unit</th><th>Normal range</th><th>Flag</th></tr>"
    ]
    for key, name, unit in ROWS:
        if key not in m:
            continue
        flag = flags.get(key) or {}
        rng = flag.get("range")
        status = flag.get("flag", "")
        css = f' class="{html.escape(status)}"' if status in ("low", "high") else ""
        lines.append(
            f"<tr{css}><td>{html.escape(name)}</td><td>{_fmt(m.get(key))}</td><td>{html.escape(unit)}</td>"
            f"<td>{'' if not rng else f'{rng[0]:g}–{rng[1]:g}'}</td><td>{html.escape(status)}</td></tr>"
        )
    lines.append("</table>")
    return "\n".join(lines)


def _kv(data: dict[str, Any]) -> str:
    def text(v: Any) -> Any:
        if isinstance(v, dict):
            return ", ".join(f"{k} {x}" for k, x in v.items())
        return str(v) if isinstance(v, list) else v

    cells = [(k, text(v)) for k, v in data.items()]
    rows = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{_fmt(v)}</td></tr>" for k, v in cells)
    return f"<table>{rows}</table>"


_STYLE = """
body{font-family:sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:0.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;font-size:14px}
tr.low td,tr.high td{background:#fde2e2}.warn{background:#fff4ce;padding:0.5em;border-left:4px solid #e0a800}
img{max-width:100%;image-rendering:pixelated}h2{border-bottom:1px solid #ddd}
"""


def write_report(analysis: Any, folder: Path) -> Path:
    """Writes ``figures/*.png`` and ``report.html`` for an analysis into ``folder``."""
    m = analysis.measurements
    figures = folder / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    made: list[tuple[str, Path]] = []
    cine = analysis.cine
    ed, es = m.get("ed_frame"), m.get("es_frame")
    if cine is not None and ed is not None:
        made.append(
            ("ED (top) and ES (bottom), every slice", ed_es_figure(cine, ed, es, figures / "ed_es.png"))
        )
        if cine.series.num_frames > 1:
            made.append(("LV/RV volume over the cycle", volume_curve_figure(m, figures / "volume_curve.png")))
        made.append(
            (
                "Uncertainty at ED (bottom: summed per-structure uncertainty)",
                uncertainty_figure(cine, ed, figures / "uncertainty_ed.png"),
            )
        )
    for run in analysis.lge:
        made.append((f"LGE {run.series.name}", series_figure(run, figures / f"lge_{run.series.name}.png")))
    for name, run in analysis.runs.items():
        if run.task_id in ("lax-seg", "mapping-seg"):
            made.append((f"{run.task_id} {name}", series_figure(run, figures / f"{run.task_id}_{name}.png")))
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>cmrfm report {html.escape(str(m.get('study')))}</title><style>{_STYLE}</style></head><body>",
        f"<h1>CMR analysis: {html.escape(str(m.get('study')))}</h1>",
        "<p>Automated measurements by cmrfm; to be reviewed by a qualified reader before clinical use.</p>",
    ]
    if m.get("warnings"):
        items = "".join(f"<li>{html.escape(w)}</li>" for w in m["warnings"])
        parts.append(f"<div class='warn'><b>Warnings</b><ul>{items}</ul></div>")
    parts.append("<h2>Function</h2>")
    parts.append(
        f"<p>ED frame {_fmt(ed)}, ES frame {_fmt(es)}; slice spacing {_fmt(m.get('slice_spacing_mm'))} mm; "
        f"BSA {_fmt(m.get('bsa_m2'))} m²; ranges for sex: {_fmt(m.get('ranges_sex'))}</p>"
    )
    parts.append(_table(m))
    diagnosis = m.get("diagnosis") or {}
    parts.append("<h2>Disease classification</h2>")
    if diagnosis.get("label"):
        probs = ", ".join(f"{html.escape(k)} {v:.2f}" for k, v in diagnosis["probabilities"].items())
        parts.append(f"<p><b>{html.escape(diagnosis['label'])}</b> ({probs})</p>")
    else:
        parts.append(f"<p>Not available: {html.escape(str(diagnosis.get('reason', '')))}</p>")
    if m.get("lge"):
        parts.append("<h2>LGE</h2>")
        for entry in m["lge"] if isinstance(m["lge"], list) else [m["lge"]]:
            parts.append(_kv(entry))
    if m.get("landmarks"):
        parts.append("<h2>Orientation</h2>" + _kv(m["landmarks"]))
    parts.append(
        "<h2>Series</h2><table><tr><th>Series</th><th>Sequence</th><th>View</th>"
        "<th>Confidence</th><th>Source</th><th>Quality</th></tr>"
    )
    for s in m.get("series", []):
        quality = (s.get("quality") or {}).get("grade", "not graded")
        parts.append(
            f"<tr><td>{_fmt(s['name'])}</td><td>{_fmt(s['sequence'])}</td><td>{_fmt(s['view'])}</td>"
            f"<td>{_fmt(s['confidence'])}</td><td>{_fmt(s['source'])}</td><td>{_fmt(quality)}</td></tr>"
        )
    parts.append("</table>")
    ood = m.get("ood") or {}
    parts.append(
        f"<h2>Reliability</h2><p>Out-of-distribution flag: <b>{'YES' if ood.get('flag') else 'no'}</b> "
        f"(mean entropy {_fmt3(ood.get('mean_entropy'))}, "
        f"threshold {_fmt3(ood.get('entropy_threshold'))})</p>"
    )
    if m.get("uncertainty"):
        parts.append(_kv(m["uncertainty"]))
    parts.append("<h2>Figures</h2>")
    for caption, path in made:
        parts.append(
            f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,{_b64(path)}'>"
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
    models = (m.get("model") or {}).get("tasks") or {}
    parts.append(
        "<h2>Models</h2>"
        + _kv({k: v.get("file", v.get("error")) for k, v in models.items()} or {"none": "no task weights"})
    )
    parts.append("</body></html>")
    out = folder / "report.html"
    out.write_text("\n".join(parts), encoding="utf-8")
    return out


def figure_bytes(image: np.ndarray) -> bytes:
    """PNG bytes of an RGB float image (for callers that embed without writing a file)."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    plt.imsave(buffer, np.clip(image, 0, 1), format="png")
    return buffer.getvalue()


__all__ = ["figure_bytes", "heat", "mosaic", "overlay", "write_report"]
