"""What ``gmkit compare --out`` leaves: report.json, a sample sheet, plots and a self-contained
index.html; and the table's rows for the terminal."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import torch

from ..checkpoint import atomic_write, save_figure, write_text
from .columns import LABELS, PROPERTIES, Column


def table_rows(report: dict) -> tuple[list[str], list[tuple[str, list[str]]]]:
    heads = [m["source"] for m in report["models"]]
    rows = []
    for p in PROPERTIES:
        cells = [m["cells"].get(p, {}).get("text", "n/a") for m in report["models"]]
        if p == "quality_common" and report.get("common_n") is None:
            continue
        label = LABELS[p]
        if p == "quality":
            label = f"sample quality: {next((m['cells']['quality'].get('fd_name') for m in report['models'] if 'fd_name' in m['cells']['quality']), 'FD')}"
        if p == "quality_common" and report.get("common_n"):
            label = f"FD at common n={report['common_n']}"
        rows.append((label, cells))
    return heads, rows


def sample_sheet(cols: list[Column], path: Path, per_model: int = 16, scale: int = 3) -> None:
    """Side by side: the first ``per_model`` samples of every model, labelled."""
    import numpy as np
    from PIL import Image, ImageDraw

    from ..imageio import make_grid

    nrow = int(math.ceil(math.sqrt(per_model)))
    tiles = []
    for c in cols:
        if c.images is not None and len(c.images):
            x = c.images[:per_model].nan_to_num(0.0)
            if x.shape[-1] < 28:
                x = torch.nn.functional.interpolate(x, size=(28, 28), mode="nearest")
            g = make_grid(x, nrow=nrow)
            g = np.repeat(np.repeat(g, scale, 0), scale, 1)
            im = Image.fromarray(g[..., 0] if g.shape[-1] == 1 else g).convert("RGB")
        else:
            im = Image.new("RGB", (nrow * 30 * scale + 2, nrow * 30 * scale + 2), (200, 200, 200))
            reason = c.cells.get("family", {}).get("na", "no samples")
            ImageDraw.Draw(im).text((10, im.height // 2), f"n/a: {reason}"[:60], fill=(90, 90, 90))
        tiles.append((c.source, im))
    h = max(t.height for _, t in tiles) + 22
    w = sum(t.width for _, t in tiles) + 8 * (len(tiles) + 1)
    sheet = Image.new("RGB", (w, h + 8), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    x = 8
    for name, t in tiles:
        label = Path(name).name if ("/" in name or "\\" in name) else name
        draw.text((x, 4), label[:40], fill=(0, 0, 0))
        sheet.paste(t, (x, 20))
        x += t.width + 8
    atomic_write(Path(path), lambda tmp: sheet.save(tmp, format="PNG"))


def plot_quality_vs_steps(points: list[dict], path: Path) -> bool:
    if not points:
        return False
    from ..extras import pyplot

    plt = pyplot()

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    by: dict = {}
    for p in points:
        by.setdefault((Path(p["checkpoint"]).name, p["sampler"]), []).append(p)
    for (ck, smp), ps in sorted(by.items()):
        ps = sorted(ps, key=lambda p: p["steps"])
        label = f"{smp} ({ck})"
        a1.plot([p["steps"] for p in ps], [p["fd"] for p in ps], "o-", label=label)
        a2.plot([p["steps"] for p in ps], [p["kid"] for p in ps], "o-", label=label)
        for p in ps:
            a1.annotate(f"n={p['n']}", (p["steps"], p["fd"]), fontsize=7, textcoords="offset points", xytext=(3, 3))
    base = statistics.median(p["baseline_fd"] for p in points)
    a1.axhline(base, color="grey", ls="--", lw=1, label="real-vs-real (median n)")
    names = points[0].get("fd_name", "FD"), points[0].get("kid_name", "KID")
    for ax, t in ((a1, f"{names[0]} (biased by n)"), (a2, f"{names[1]} (unbiased in n)")):
        ax.set_xscale("log")
        ax.set_xlabel("sampler steps (network calls per image)")
        ax.set_title(t)
        ax.grid(alpha=0.3)
    a1.legend(fontsize=7)
    fig.suptitle("diffusion: quality against steps")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)
    return True


def plot_losses(cols: list[Column], path: Path) -> bool:
    logged = [c for c in cols if c.log]
    if not logged:
        return False
    from ..extras import pyplot

    plt = pyplot()

    k = len(logged)
    fig, axes = plt.subplots(1, k, figsize=(3.6 * k, 3.2), squeeze=False)
    for ax, c in zip(axes[0], logged):
        pts = [(r["step"], r["loss"]) for r in c.log if isinstance(r.get("loss"), (int, float))]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=1)
        tail_from = c.cells["stability"].get("tail_from_step")
        if tail_from is not None:
            ax.axvspan(tail_from, pts[-1][0], color="orange", alpha=0.15, label="last 20%")
            ax.legend(fontsize=7)
        ax.set_title(f"{Path(c.source).name} ({c.family})", fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("training loss")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)
    return True


def _data_uri(path: Path) -> str:
    import base64

    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def write_html(report: dict, images: dict[str, Path], path: Path) -> None:
    """One self-contained page: the table, the sheet and the plots inlined (no network)."""
    from html import escape

    heads, rows = table_rows(report)
    th = "".join(f"<th>{escape(h)}</th>" for h in heads)
    body = "".join(
        f"<tr><th class='prop'>{escape(label)}</th>" + "".join(
            f"<td class='{'na' if c.startswith('n/a') else ''}'>{escape(c)}</td>" for c in cells) + "</tr>"
        for label, cells in rows)
    figs = "".join(f"<figure><img alt='{escape(k)}' src='{_data_uri(p)}'><figcaption>{escape(k)}</figcaption></figure>"
                   for k, p in images.items())
    env = report["environment"]
    samples = "".join(f"<li>{escape(m['source'])}: {escape(str(m['info'].get('sample_note', m['info'].get('error', '-'))))}</li>"
                      for m in report["models"])
    notes = "".join(f"<li>{escape(n)}</li>" for n in report["notes"])
    claims = "".join(f"<li><b>{escape(c['claim'])}</b>: {escape(c['verdict'])} &mdash; {escape(c['evidence'])}</li>"
                     for c in report.get("claims", []))
    html = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{escape(report['title'])}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; font-size: 13px; }}
th, td {{ border: 1px solid #ccc; padding: 4px 8px; vertical-align: top; text-align: left; }}
th.prop {{ background: #f4f4f4; white-space: nowrap; }}
td.na {{ color: #999; }}
figure {{ display: inline-block; margin: 1em 1em 0 0; }}
img {{ max-width: 100%; }}
</style></head><body>
<h1>{escape(report['title'])}</h1>
<p>Data: {escape(report['data']['name'])} &mdash; {escape(report['data']['reference'])}. {escape(report['data']['note'] or '')}</p>
<p>Feature extractor for sample quality: {escape(report.get('extractor', {}).get('name') or 'none')} &mdash; {escape(report.get('extractor', {}).get('description') or report.get('extractor', {}).get('error') or '')}</p>
<table><tr><th></th>{th}</tr>{body}</table>
<h2>Textbook claims on this data</h2><ul>{claims or '<li>none evaluated</li>'}</ul>
<h2>Samples and plots</h2>{figs}
<h2>Sample counts</h2><ul>{samples}</ul>
<h2>Notes</h2><ul>{notes}</ul>
<p>gmkit {escape(env['gmkit'])}, torch {escape(env['torch'])}, device {escape(env['device'])}
({escape(str(env['threads']))} threads, {escape(str(env['cpu']))}{', ' + escape(env['gpu']) if env.get('gpu') else ''}),
{escape(str(report['seconds']))} s in all.</p>
</body></html>
"""
    write_text(path, html)



def write_report(report: dict, cols: list[Column], out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    files = {"samples (first 16 of each model, seeds 0-15)": out / "samples.png"}
    sample_sheet(cols, files["samples (first 16 of each model, seeds 0-15)"])
    if plot_quality_vs_steps(report["quality_vs_steps"], out / "quality_vs_steps.png"):
        files["diffusion: quality against steps"] = out / "quality_vs_steps.png"
    if plot_losses(cols, out / "training_loss.png"):
        files["training loss (from each run's log.jsonl)"] = out / "training_loss.png"
    report["files"] = {k: str(v) for k, v in files.items()}
    write_text(out / "report.json", json.dumps(report, indent=2, default=str) + "\n")
    write_html(report, files, out / "index.html")
    return files

