"""Driving the Textual UI in tests the way a person would: bring a widget into view, then click it."""

from __future__ import annotations

from textual.pilot import Pilot


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
