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
