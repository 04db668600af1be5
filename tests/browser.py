# Copyright (c) cmr-synth contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""Open a page in headless Chromium (Debian's ``chromium``) and report what rendered: images loaded or broken,
tables, script errors. The check script is added to a copy of the page; the page itself is not changed."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--virtual-time-budget=10000", "--dump-dom"]
CHECK = """<script>
window.__errors = [];
window.addEventListener('error', e => window.__errors.push(String(e.message || e.type)), true);
window.addEventListener('load', () => {
  const images = Array.from(document.images);
  const broken = images.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt || i.src.slice(0, 40));
  const out = {images: images.length, broken: broken, tables: document.querySelectorAll('table').length,
               rows: document.querySelectorAll('tr').length, errors: window.__errors};
  document.body.setAttribute('data-check', JSON.stringify(out));
});
</script>"""


def render(page: Path, work: Path) -> dict:
    """Load ``page`` (a copy with the check script) in headless Chromium; returns images, broken, tables, rows, errors."""
    copy = work / f"checked_{page.name}"
    text = page.read_text()
    copy.write_text(text.replace("<head>", "<head>" + CHECK, 1))
    proc = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={work / 'chromium-profile'}", copy.as_uri()],
                          capture_output=True, text=True, timeout=120)
    found = re.search(r'data-check="([^"]*)"', proc.stdout)
    assert found, f"the page did not finish loading in Chromium:\n{proc.stderr[-2000:]}"
    return json.loads(html.unescape(found.group(1)))
