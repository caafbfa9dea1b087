"""The report in a real browser: headless Chromium loads every image, logs no error, draws a page,
for a two-run report and for a grouped one of 27 runs (9 methods x 3 seeds, some diverging, per-layer norms).

Chromium comes from the Debian package ``chromium``; ``.ci/run`` / ``make test`` install it with
``apt-get install -y --no-install-recommends chromium`` when missing. This test tries that install
itself when it runs as root with apt available, and skips (with the reason) only when Chromium is
absent and cannot be installed.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from gradclip.report import build_report  # noqa: E402

from test_report import NAN_STEP, method_runs, synthetic_records, write_log  # noqa: E402

#: The 27-run comparison: (method, keyword arguments of ``method_runs``).
METHODS = (("none", {"diverge_at": 3, "clip": "never"}), ("value:1.0", {"clip": "always"}),
           ("norm:1.0", {"clip": "always"}), ("zclip", {"diverge_at": 3}), ("autoclip:p=10", {}),
           ("adagc", {"clip": "always"}), ("maxhist:5", {"diverge_at": 5}), ("spikeguard+norm:1.0", {}),
           ("agc:0.01", {"clip": "always"}))

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]
# Written into the page copy loaded by --dump-dom: counts the images that really decoded.
PROBE = """<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  var p = document.createElement('pre'); p.id = 'probe';
  p.textContent = 'IMAGES ' + imgs.length + ' LOADED ' + ok;
  document.body.appendChild(p);
});
</script>"""


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    if os.geteuid() == 0 and shutil.which("apt-get"):  # try the install CI does
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        try:
            subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "chromium"], env=env,
                           capture_output=True, timeout=600, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return shutil.which("chromium")
    return None


@pytest.fixture(scope="module")
def chromium() -> str:
    path = _chromium()
    if path is None:
        pytest.skip("headless Chromium is not installed and could not be installed "
                    "(apt-get install -y --no-install-recommends chromium needs root and the Debian mirror)")
    return path


def _run(chromium: str, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([chromium, *FLAGS, f"--user-data-dir={tmp / 'profile'}", *args],
                          capture_output=True, text=True, timeout=120, check=False)


def _png_stats(path: Path) -> tuple[int, int, int]:
    """(width, height, number of distinct byte values in the decoded pixels) of an 8-bit PNG."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"not a PNG: {path}"
    width, height = struct.unpack(">II", data[16:24])
    pos, idat = 8, b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind = data[pos + 4:pos + 8]
        if kind == b"IDAT":
            idat += data[pos + 8:pos + 8 + length]
        pos += 12 + length
    return width, height, len(set(zlib.decompress(idat)))


@pytest.fixture(scope="module", params=["two-runs", "27-runs"])
def report(request, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("browser")
    if request.param == "two-runs":
        a = write_log(tmp / "a.jsonl", synthetic_records("clipped", layers=True))
        b = write_log(tmp / "b.jsonl", synthetic_records("exploding", seed=1, nan_at=NAN_STEP, scale=3.0))
        return build_report([a, b], tmp / "report.html")
    logs = [log for method, kwargs in METHODS for log in method_runs(method, n=200, layers=True, **kwargs)]
    out = build_report(logs, tmp / "report.html")
    text = out.read_text(encoding="utf-8")
    assert text.count('id="plot-layers-') == len(METHODS)  # one heatmap per method, not per run
    return out


def test_screenshot_is_not_blank(chromium, report, tmp_path):
    shot = tmp_path / "report.png"
    proc = _run(chromium, tmp_path, f"--screenshot={shot}", "--window-size=1400,3000", report.as_uri())
    assert shot.is_file(), f"no screenshot at {shot}; chromium said:\n{proc.stderr[-2000:]}"
    width, height, distinct = _png_stats(shot)
    assert (width, height) == (1400, 3000), f"screenshot {shot} is {width}x{height}"
    assert distinct > 20, f"screenshot looks blank ({distinct} distinct byte values): {shot}"
    print(f"screenshot: {shot}")


def test_all_images_load_without_console_errors(chromium, report, tmp_path):
    page = tmp_path / "probe.html"
    page.write_text(report.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8")
    proc = _run(chromium, tmp_path, "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000",
                "--dump-dom", page.as_uri())
    match = re.search(r"IMAGES (\d+) LOADED (\d+)", proc.stdout)
    assert match, f"the probe did not run; stderr:\n{proc.stderr[-2000:]}"
    total, loaded = map(int, match.groups())
    assert total == len(re.findall(r"<img ", report.read_text(encoding="utf-8"))) >= 4
    assert loaded == total, f"{total - loaded} of {total} images did not load ({report})"
    console = [line for line in proc.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert not console, "console errors:\n" + "\n".join(console)
