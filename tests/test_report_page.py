"""`prunelab report`: one self-contained HTML page and its Markdown twin from a tiny sweep and
a reproduction directory."""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from prunelab.cli import main
from prunelab.errors import ConfigError
from prunelab.report import new_figure, save_figure
from prunelab.report_page import find_sources, markdown_to_html, write_report
from prunelab.sweep import run_sweep, spec_from_dict

CHROMIUM = Path("/usr/bin/chromium")
SPEC = {
    "name": "tiny",
    "base": {"train": {"epochs": 2, "batch_size": 50, "optimizer": "adam", "lr": 0.01,
                       "eval_train": False, "checkpoint_epochs": False}},
    "tasks": [{"name": "xor", "dataset": "xor", "model": "mlp", "model_options": {"widths": [8]},
               "data_options": {"n_irrelevant": 2, "n_train": 200, "n_test": 200}}],
    "methods": ["dense", {"name": "magnitude", "options": {"at_epoch": 0}}],
    "sparsities": [0.5],
    "seeds": [0, 1],
}


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Path:
    """A directory with one finished tiny sweep and one reproduction output."""
    root = tmp_path_factory.mktemp("lab")
    run_sweep(spec_from_dict(SPEC), root / "sweeps" / "tiny", workers=1)
    repro = root / "reproduce-demo"
    (repro / "figures").mkdir(parents=True)
    fig, axes = new_figure()
    axes[0][0].plot([0, 1], [1, 0])
    save_figure(fig, repro / "figures" / "curve.png")
    (repro / "results.json").write_text("{}")
    (repro / "report.md").write_text(
        "# Demo claim\n\nThe claim **held**: pruned <beats> scratch.\n\n"
        "| method | accuracy |\n|---|---|\n| pruned | 0.9700 |\n| scratch | 0.9100 |\n\n"
        "![curve](figures/curve.png)\n")
    return root


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.imgs: list[str] = []
        self.tables = 0
        self.text: list[str] = []
        self.stack: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.imgs.append(dict(attrs)["src"])
        elif tag not in ("br", "hr", "meta"):
            self.stack.append(tag)
            self.tables += tag == "table"

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"unbalanced </{tag}>"
        self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def _png_size(uri: str) -> tuple[int, int]:
    from PIL import Image

    assert uri.startswith("data:image/png;base64,")
    img = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    img.load()
    return img.size


def test_report_page_has_the_comparison_table_and_embedded_figures(lab):
    html_path, md_path = write_report(lab)
    assert html_path == lab / "report.html" and md_path == lab / "report.md"
    page = _Page()
    page.feed(html_path.read_text())
    page.close()
    assert page.stack == []  # every tag closed
    text = " ".join(page.text)
    # the method comparison table: both methods, accuracy, sparsity, params, FLOPs, time
    for header in ("test accuracy", "weight sparsity", "params (nonzero / total)",
                   "FLOPs (sparse / dense)", "train s"):
        assert header in text
    md = md_path.read_text()
    rows = [line for line in md.splitlines() if line.startswith("| xor |")]
    assert len(rows) == 2 and "| dense |" in rows[0] and "| magnitude | 0.50 | 2 |" in rows[1]
    assert "| 0.500 |" in rows[1]  # achieved weight sparsity
    # the reproduction: heading nested, its table, escaped text, its figure
    assert "Demo claim" in text and "pruned <beats> scratch" in text
    assert "&lt;beats&gt;" in html_path.read_text()
    assert page.tables == 3  # comparison, pivot, reproduction
    # figures: 2 from the comparison, 1 from the reproduction, all embedded PNGs that decode
    assert len(page.imgs) == 3
    for uri in page.imgs:
        w, h = _png_size(uri)
        assert w > 100 and h > 100
    assert not re.search(r'src="(?!data:)', html_path.read_text())  # nothing external
    # the Markdown twin points at PNG files that exist
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert len(links) == 3
    for link in links:
        assert (md_path.parent / link).is_file(), link


def test_sources_found_in_a_directory_and_beside_a_database(lab):
    src = find_sources(lab)
    assert [p.name for p in src.databases] == ["results.db"]
    assert [p.name for p in src.reproductions] == ["reproduce-demo"]
    src = find_sources(lab / "sweeps" / "tiny" / "results.db")
    assert src.reproductions == []  # none beside that database
    assert len(src.databases) == 1


def test_report_cli_and_custom_output(lab, tmp_path, capsys):
    out = tmp_path / "page" / "lab.html"
    assert main(["report", str(lab), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "1 results database(s), 1 reproduction report(s)" in printed
    assert out.is_file() and (tmp_path / "page" / "lab.md").is_file()
    md = (tmp_path / "page" / "lab.md").read_text()
    for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md):
        assert (out.parent / link).is_file()  # rebased relative to the new location
    assert out.read_text().count("data:image/png;base64,") == 3


def test_report_errors_are_one_line(tmp_path, capsys):
    with pytest.raises(ConfigError, match="does not exist"):
        write_report(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no results database"):
        write_report(tmp_path / "empty")
    (tmp_path / "x.txt").write_text("hi")
    assert main(["report", str(tmp_path / "x.txt")]) == 2
    err = capsys.readouterr().err
    assert "is not a results database" in err and err.count("\n") == 1
    bad = tmp_path / "bad.db"
    bad.write_text("not sqlite" * 50)
    assert main(["report", str(bad)]) == 2
    assert "corrupt or not a prunelab store" in capsys.readouterr().err


def test_markdown_renderer_subset(tmp_path):
    md = ("## Title *x*\n\npara with `code <b>` and [link](https://e.org)\ncontinued\n\n"
          "- one\n- two\n\n1. first\n2. second\n\n```\na < b\n```\n\n"
          "| a | b |\n|---:|---|\n| 1 | **2** |\n\n![gone](missing.png)\n")
    out = markdown_to_html(md, tmp_path)
    assert "<h2>Title <em>x</em></h2>" in out
    assert "<code>code &lt;b&gt;</code>" in out and '<a href="https://e.org">link</a>' in out
    assert "continued</p>" in out
    assert "<ul><li>one</li><li>two</li></ul>" in out
    assert "<ol><li>first</li><li>second</li></ol>" in out
    assert "<pre><code>a &lt; b</code></pre>" in out
    assert "<td>1</td><td><strong>2</strong></td>" in out
    assert "missing figure: missing.png" in out


@pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium not installed; the page "
                    "is checked with an HTML parser and PIL above instead")
def test_page_renders_in_headless_chromium(lab, tmp_path):
    html_path, _ = write_report(lab, tmp_path / "r.html")
    dom = subprocess.run([str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu",
                          "--dump-dom", html_path.as_uri()], capture_output=True, text=True,
                         timeout=120).stdout
    assert dom.count("<table") == 3 and dom.count("data:image/png;base64,") == 3
    shot = tmp_path / "shot.png"
    subprocess.run([str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu",
                    f"--screenshot={shot}", "--window-size=1200,3000", html_path.as_uri()],
                   capture_output=True, timeout=120)
    assert shot.is_file() and shot.stat().st_size > 10000
    shutil.rmtree(tmp_path, ignore_errors=True)


def _row(task, method, label, acc, *, target=None, seed=0, **metrics):
    return {"status": "done", "task": task, "method": method, "label": label, "sparsity": target,
            "seed": seed, "test_accuracy": acc, "num_classes": 2, **metrics}


def test_collapsed_and_far_below_dense_rows_are_flagged():
    from prunelab.report_page import comparison_rows, comparison_table, pivot_table

    rows = [_row("xor", "dense", "dense", 0.938, weight_sparsity=0.0, weights_nonzero=100),
            _row("xor", "bernoulli", "bernoulli", 0.656, weight_sparsity=0.0,
                 weights_removed_vs_start=0.98, params_removed_vs_start=0.97),
            _row("xor", "gmp", "gmp", 0.93, target=0.9, weight_sparsity=0.9,
                 weights_removed_vs_start=0.9),
            _row("xor", "units", "units", 0.52, weight_sparsity=0.0,
                 weights_removed_vs_start=0.5)]
    summary = {r["label"]: r for r in comparison_rows(rows)}
    assert summary["dense"]["flag"] == "" and summary["gmp"]["flag"] == ""
    assert summary["bernoulli"]["flag"] == "28.2 pts below dense"
    assert summary["units"]["flag"] == "near chance (0.50)"
    table = comparison_table(list(summary.values()))
    line = [x for x in table.splitlines() if "| bernoulli |" in x][0]
    assert "**28.2 pts below dense**" in line and "| 0.980 / 0.970 |" in line
    assert "| 0.000 |" in line  # the final (shrunk) network's own weight sparsity, still shown
    assert "0.6560 (0.98) **!**" in pivot_table(list(summary.values()))


def test_options_are_chosen_on_the_validation_twin_only():
    from prunelab.report_page import chosen_on_validation, chosen_table, comparison_rows

    rows = []
    for task, accs in (("xor:validation", {"b(p=1)": 0.9, "b(p=30)": 0.6}),
                       ("xor", {"b(p=1)": 0.85, "b(p=30)": 0.95})):  # test would pick p=30
        rows.append(_row(task, "dense", "dense", 0.93))
        for seed in (0, 1):
            rows += [_row(task, "bernoulli", label, acc + 0.01 * seed, seed=seed,
                          weights_removed_vs_start=0.9) for label, acc in accs.items()]
    chosen = chosen_on_validation(comparison_rows(rows))
    by_method = {c["method"]: c for c in chosen}
    assert set(by_method) == {"dense", "bernoulli"}
    c = by_method["bernoulli"]
    assert c["label"] == "b(p=1)" and c["options"] == 2
    assert c["val_accuracy"] == pytest.approx(0.905)
    assert c["row"]["test_accuracy"] == pytest.approx(0.855) and c["row"]["task"] == "xor"
    assert "| b(p=1) (of 2) | 0.9050 | 0.8550 ± 0.0071 |" in chosen_table(chosen)


def test_report_of_a_sweep_with_a_structured_method_and_a_validation_twin(tmp_path):
    """End to end: bernoulli removes units, so its final network has weight sparsity 0; the
    report shows what it removed from the network it started from, and the option chosen on
    the validation twin."""
    spec = {"name": "structured",
            "base": {"train": {"epochs": 3, "batch_size": 50, "optimizer": "adam", "lr": 0.01,
                               "eval_train": False, "checkpoint_epochs": False}},
            "tasks": [{"name": "xor", "dataset": "xor", "model": "mlp",
                       "model_options": {"widths": [16, 16]}, "validation": 0.25,
                       "data_options": {"n_irrelevant": 2, "n_train": 200, "n_test": 200}}],
            "methods": ["dense", {"name": "bernoulli",
                                  "options": {"pi": 0.05, "theta_init": 0.6},
                                  "grid": {"penalty_scale": [2.0, 20.0]}}],
            "seeds": [0]}
    run_sweep(spec_from_dict(spec), tmp_path / "s", workers=1)
    _, md_path = write_report(tmp_path / "s")
    md = md_path.read_text()
    assert "removed vs start (weights / params)" in md and "Options chosen on validation" in md
    line = [x for x in md.splitlines()
            if x.startswith("| xor | bernoulli(penalty_scale=20.0) |")][0]
    cells = [c.strip() for c in line.strip("|").split("|")]
    removed = float(cells[6].split("/")[0])
    assert removed > 0.3 and cells[7] == "0.000"  # removed vs start; final weight sparsity
    chosen = [x for x in md.splitlines() if x.startswith("| xor | bernoulli |")]
    assert len(chosen) == 1 and "(of 2)" in chosen[0]
