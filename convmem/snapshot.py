"""Renders HTML (a plan's view, a report) to a PNG with headless Chromium, for docs and reports.

Chromium is an OS package (``apt-get install chromium``), not a Python dependency; nothing here
is imported by ``import convmem``.
"""

from __future__ import annotations

import os
from pathlib import Path

#: Flags for a headless Chromium that touches nothing outside its throw-away profile.
CHROMIUM_FLAGS: tuple[str, ...] = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
)


def find_chromium() -> str | None:
    """The path of a Chromium or Chrome binary on this machine, or None."""
    import shutil

    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def html_to_png(
    document: str,
    path: str | os.PathLike[str],
    *,
    width: int = 1000,
    height: int = 700,
    chromium: str | None = None,
    timeout: float = 60.0,
) -> Path:
    """Renders an HTML document to a PNG with headless Chromium (for docs and reports).

    Chromium runs with a fresh temporary profile, no network services and no sandbox (it runs
    in containers as root); the page is loaded from a temporary file.

    Args:
        document: The whole document (see :func:`html_page`).
        path: Where to write the PNG.
        width: Viewport width in CSS pixels.
        height: Viewport height: the screenshot is this tall; content below it is cut.
        chromium: The browser binary; found on ``PATH`` when None.
        timeout: Seconds before the browser is stopped.

    Returns:
        The PNG's path.

    Raises:
        FileNotFoundError: no Chromium binary was found (``apt-get install chromium``).
        RuntimeError: Chromium ran but wrote no PNG (its output is in the message).
    """
    import subprocess
    import tempfile

    binary = chromium or find_chromium()
    if binary is None:
        raise FileNotFoundError(
            "rendering HTML to PNG needs Chromium: apt-get install chromium (or pass chromium=)"
        )
    out = Path(path).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="convmem-chromium-") as tmp:
        page = Path(tmp) / "page.html"
        page.write_text(document, encoding="utf-8")
        target = Path(tmp) / "shot.png"
        cmd = [
            binary,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={Path(tmp) / 'profile'}",
            f"--window-size={width},{height}",
            f"--screenshot={target}",
            page.as_uri(),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        if not target.exists():
            raise RuntimeError(
                f"Chromium wrote no screenshot (exit {proc.returncode}): "
                f"{(proc.stderr or proc.stdout)[-2000:]}"
            )
        out.write_bytes(target.read_bytes())
    return out


__all__ = ["CHROMIUM_FLAGS", "find_chromium", "html_to_png"]
