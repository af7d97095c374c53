"""Headless Chromium for the report tests: load a page, return its DOM after scripts ran, its console
messages, and optionally a screenshot.

Console messages come from Chromium's own log (``--enable-logging=stderr``: one ``CONSOLE`` line per message).
Dialogs and uncaught errors are caught by a small script put first in a copy of the page (beside the
original, so relative links still resolve): ``alert``/``confirm``/``prompt`` and ``window.onerror`` write
into ``<html data-dialogs>`` / ``<html data-errors>``, which ``--dump-dom`` then shows.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--enable-logging=stderr",
    "--v=0",
    "--virtual-time-budget=15000",
]

_PROBE = """<script>
(function () {
  var root = document.documentElement;
  function note(attr, text) { root.setAttribute(attr, (root.getAttribute(attr) || "") + "|" + text); }
  window.alert = function (m) { note("data-dialogs", "alert:" + m); };
  window.confirm = function (m) { note("data-dialogs", "confirm:" + m); return false; };
  window.prompt = function (m) { note("data-dialogs", "prompt:" + m); return null; };
  window.addEventListener("error", function (e) { note("data-errors", e.message); });
})();
</script>"""


def available() -> bool:
    return Path(CHROMIUM).exists()


@dataclass
class Page:
    dom: str
    console: list[str]

    def root_attribute(self, name: str) -> str | None:
        """An attribute of the ``<html>`` element after scripts ran (where the probe writes)."""
        found: dict[str, str | None] = {}

        class Root(HTMLParser):
            def handle_starttag(self, tag, attrs):
                if tag == "html" and not found:
                    found.update(attrs)
                    found.setdefault("", None)

        Root().feed(self.dom)
        return found.get(name)

    @property
    def dialogs(self) -> str | None:
        return self.root_attribute("data-dialogs")

    @property
    def errors(self) -> str | None:
        return self.root_attribute("data-errors")


def load(
    page: Path, screenshot: Path | None = None, size: tuple[int, int] = (1280, 6000), script: str | None = None
) -> Page:
    """Load ``page`` in headless Chromium with the dialog/error probe; ``screenshot`` also saves a PNG.
    ``script`` (JavaScript) runs after the page's own scripts; it may write results into attributes of
    ``document.documentElement`` (read them with :meth:`Page.root_attribute`)."""
    html = page.read_text("utf-8")
    head = html.index("<head>") + len("<head>")
    html = html[:head] + _PROBE + html[head:]
    if script is not None:
        end = html.rindex("</body>")
        html = html[:end] + f"<script>{script}</script>" + html[end:]
    probed = page.with_name(f".probe-{page.name}")
    probed.write_text(html, "utf-8")
    try:
        with tempfile.TemporaryDirectory() as profile:
            args = [CHROMIUM, *FLAGS, f"--user-data-dir={profile}"]
            dom = subprocess.run([*args, "--dump-dom", probed.as_uri()], capture_output=True, text=True, timeout=120)
            console = [line for line in dom.stderr.splitlines() if ":CONSOLE" in line]
            if screenshot is not None:
                shot = subprocess.run(
                    [*args, f"--window-size={size[0]},{size[1]}", f"--screenshot={screenshot}", probed.as_uri()],
                    capture_output=True,
                    text=True,
                    timeout=120,
                )
                console += [line for line in shot.stderr.splitlines() if ":CONSOLE" in line]
    finally:
        probed.unlink()
    return Page(dom=dom.stdout, console=console)
