"""Driving the Textual UI in tests the way a person would: open a page, bring a widget into view, click it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from textual.pilot import Pilot

from language_pipes.tui.app import LanguagePipesApp

# The terminal size the UI tests run in: every page fits without scrolling sideways.
SIZE = (130, 48)


async def click(pilot: Pilot[int], selector: str) -> None:
    """Scroll ``selector`` into view and click it; fails the test if nothing there takes the click."""
    target = pilot.app.screen.query_one(selector)
    target.scroll_visible(animate=False)
    await pilot.pause()
    for _ in range(40):  # a Button ignores clicks while its pressed effect (0.2 s) still shows
        if not target.has_class("-active"):
            break
        await pilot.pause(0.05)
    assert await pilot.click(selector), f"could not click {selector}"
    await pilot.pause()


@asynccontextmanager
async def app_on_page(config: Path, *tabs: str) -> AsyncIterator[tuple[LanguagePipesApp, Pilot[int]]]:
    """The app on a fresh node config (``node_id = "n"``), on the page that clicking ``tabs`` opens."""
    config.write_text('node_id = "n"\n')
    app = LanguagePipesApp(config)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        for tab in tabs:
            await click(pilot, tab)
        yield app, pilot
