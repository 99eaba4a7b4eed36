"""`mtcli report`: one self-contained HTML page per run, checked as text and rendered in headless Chromium."""

import re
import shutil
import subprocess

import pytest

from tests.conftest import tiny_dict
from tests.test_cli import invoke, one_line_error

CHROMIUM = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(name)), None)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    config = root / "exp.yaml"
    import yaml

    config.write_text(yaml.safe_dump(tiny_dict("attention", root / "run",
                                               train={"max_steps": 30, "validate_every": 10, "log_every": 5})))
    assert invoke("train", config).exit_code == 0
    result = invoke("report", root / "run", "--samples", "2", "--beam", "1")
    assert result.exit_code == 0, result.output
    assert f"wrote {root / 'run' / 'report.html'}" in result.output.replace("\n", "")
    return root / "run" / "report.html"


def test_report_has_every_section_and_no_network_resource(report):
    page = report.read_text(encoding="utf-8")
    for section in ("Test scores", "Learning curves", "BLEU by source length", "Sample translations",
                    "Configuration", "Data", "Environment"):
        assert f"<h2>{section}</h2>" in page
    assert page.count("<svg") >= 4  # curves, length figure, two heatmaps
    assert "nrefs:1|bs:1000|seed:12345|case:mixed|eff:no|tok:13a" in page and "AER %" in page
    assert re.search(r"built-in toy pair, seed \d+, 16 pairs .*?[0-9a-f]{64}", page)
    assert re.search(r"<td>torch</td><td>2\.\d+", page) and "backend: attention" in page
    # nothing is fetched: no src/href to another document or host, no @import, no url() to a file
    assert not re.search(r"""(?:src|href)\s*=\s*["']?(?!#)[a-z]*:?//""", page, flags=re.I)
    assert "@import" not in page and not re.search(r"url\((?!#)", page)


def test_report_mistakes(tmp_path):
    one_line_error(invoke("report", tmp_path / "missing"), "no such checkpoint or run folder")


@pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (apt-get install chromium)")
def test_report_renders_in_headless_chromium(report, tmp_path):
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", report.as_uri()], capture_output=True, text=True,
                         timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "<h1>tiny-attention</h1>" in dom.stdout and dom.stdout.count("<svg") >= 4
    shot = tmp_path / "report.png"
    subprocess.run([CHROMIUM, *flags, f"--screenshot={shot}", "--window-size=1200,3000", report.as_uri()],
                   capture_output=True, timeout=120)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 50_000  # drawn, not blank
