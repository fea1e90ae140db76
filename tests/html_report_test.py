"""The HTML report renders in headless Chromium with every referenced image loaded."""
import html.parser
import os
import pathlib
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from pipnet_tf.data.datasets import image_set_from_files
from pipnet_tf.explain import write_explanations
from tests.explain_test import SIZE, tiny_model

CHROMIUM = next((p for p in ("/usr/bin/chromium", shutil.which("chromium") or "",
                             shutil.which("chromium-browser") or "") if p and pathlib.Path(p).is_file()),
                None)
PROBE = """<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; });
  var out = document.createElement('pre');
  out.id = 'probe';
  out.textContent = 'IMAGES total=' + imgs.length + ' loaded=' + ok.length;
  document.body.appendChild(out);
});
</script></body>"""


class _Images(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.sources = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.sources.append(dict(attrs)["src"])


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(16):
        path = root / "images" / f"img_{i:02d}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (SIZE, SIZE, 3), np.uint8)).save(path)
        paths.append(str(path))
    evaluation = {"test": {"top1_accuracy": 0.5}, "ood": {
        "percentile": 95.0, "tpr": 0.95, "thresholds": [0.1] * 6,
        "sources": {"noise": {"num_images": 3, "accepted": 0.0}}}}
    train = image_set_from_files(paths[:12], SIZE, str(root / "cache"))
    explained = image_set_from_files(paths[12:], SIZE, str(root / "cache"))
    index = write_explanations(tiny_model(), [f"class {c}" for c in range(6)], train, explained,
                               root / "out", evaluation=evaluation, k=5)
    return index


def test_report_references_existing_files(report):
    parser = _Images()
    parser.feed(report.read_text())
    assert len(parser.sources) > 5
    for src in parser.sources:
        assert not re.match(r"^(/|[a-z]+:)", src), src  # relative: opens from disk anywhere
        assert (report.parent / src).is_file(), src


def test_report_renders_in_headless_chromium(report, tmp_path):
    if CHROMIUM is None:
        message = ("chromium is not installed. To run this test install it (Debian/Ubuntu: "
                   "sudo apt-get install chromium) so that `chromium` is on PATH; .ci/run "
                   "does.")
        if os.environ.get("PIPNET_REQUIRE_CHROMIUM"):  # CI: a missing browser is a failure
            pytest.fail(message)
        pytest.skip(message)
    parser = _Images()
    parser.feed(report.read_text())
    probe_page = report.parent / "probe.html"
    probe_page.write_text(report.read_text().replace("</body>", PROBE))
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", "--allow-file-access-from-files",
           "--virtual-time-budget=10000", "--dump-dom", probe_page.as_uri()]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    match = re.search(r"IMAGES total=(\d+) loaded=(\d+)", result.stdout)
    assert match, (result.returncode, result.stdout[-2000:], result.stderr[-2000:])
    total, loaded = int(match.group(1)), int(match.group(2))
    assert total == len(parser.sources) and loaded == total, (total, loaded)
    # And a screenshot of the real page is a non-blank picture.
    shot = tmp_path / "page.png"
    subprocess.run([*cmd[:-2], "--window-size=1200,1600", f"--screenshot={shot}", report.as_uri()],
                   capture_output=True, timeout=120, check=False)
    pixels = np.asarray(Image.open(shot).convert("L"))
    assert pixels.std() > 10


def test_make_test_installs_no_system_packages():
    """Only CI installs Chromium; `make test` on a user's machine never runs apt-get."""
    root = pathlib.Path(__file__).resolve().parents[1]
    assert "apt-get" not in (root / "Makefile").read_text()
    ci = (root / ".ci" / "run").read_text()
    assert "apt-get install" in ci and "chromium" in ci and "PIPNET_REQUIRE_CHROMIUM=1" in ci
