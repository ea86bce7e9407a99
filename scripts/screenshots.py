"""Makes ``screenshots/``: the UI's scenes (``tests/tui_scenes.py``, the ones the SVG
snapshot tests check) as SVG, and as PNG where ``rsvg-convert`` (Debian's librsvg2-bin) is
installed. Run from the repository's root: ``python scripts/screenshots.py``.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests import tui_scenes  # noqa: E402

OUTPUT = REPO / "screenshots"


async def shoot(scene: tui_scenes.Scene, directory: Path) -> str:
    with tui_scenes.scene_redis(directory) as server:
        client = server.client()
        log = scene.seed(client, directory)
        client.close()
        app = tui_scenes.scene_app(directory, log)
        async with app.run_test(size=scene.size) as pilot:
            await tui_scenes.first_picture(pilot)
            if scene.then is not None:
                await scene.then(pilot, server)
            return app.export_screenshot(title=f"tuitop — {scene.title}")


def to_png(svg: Path) -> Path | None:
    converter = shutil.which("rsvg-convert")
    if converter is None:
        return None
    # Textual's SVG relies on a browser keeping runs of spaces; librsvg collapses them
    # unless told to preserve them.
    text = svg.read_text().replace("<svg ", '<svg xml:space="preserve" ', 1)
    png = svg.with_suffix(".png")
    subprocess.run([converter, "-o", str(png)], input=text.encode(), check=True)
    return png


def main() -> None:
    OUTPUT.mkdir(exist_ok=True)
    for scene in tui_scenes.SCENES:
        with tempfile.TemporaryDirectory(prefix="tuitop-shot-") as temp, tui_scenes.utc():
            svg = OUTPUT / f"{scene.name}.svg"
            svg.write_text(asyncio.run(shoot(scene, Path(temp))))
        png = to_png(svg)
        print(f"{svg.relative_to(REPO)}" + (f", {png.relative_to(REPO)}" if png else ""))
    if shutil.which("rsvg-convert") is None:
        print("no PNG: rsvg-convert not found (apt install librsvg2-bin)")


if __name__ == "__main__":
    main()
