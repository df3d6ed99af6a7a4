"""Take the README's screenshot of the SPA: logged in, with the catalogue, a cart, items viewed and a
favourite (made before signing in, so they moved into the account) and the recommendations.

    npm --prefix frontend ci && npm --prefix frontend run build
    .venv/bin/python tests/browser/make_screenshot.py [output.png]   # default: frontend/screenshot.png

It starts its own uvicorn with a temporary store, like the browser tests.
"""

from __future__ import annotations

import sys
from pathlib import Path

from browser_support import (
    REPO,
    catalogue_loaded,
    expect_cart,
    launch_chromium,
    register,
    register_and_login,
    require_dist,
    run_server,
    shop,
)
from playwright.sync_api import expect, sync_playwright

PEOPLE = ["marko", "ana"]  # the second one is the one shown logged in


def main() -> None:
    output = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "frontend" / "screenshot.png"
    require_dist()
    with run_server() as server, sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        context = browser.new_context(base_url=server.url, viewport={"width": 1200, "height": 640})
        page = context.new_page()
        page.goto("/")
        for name in PEOPLE[:-1]:
            register(page, name)
            expect(page.get_by_role("status")).to_have_text(f"Registered {name}, please log in")
        catalogue_loaded(page)
        shop(page, 1, 4, 4)
        for item_id, name in ((3, "Ceramic dripper"), (4, "Paper filters (100)")):
            page.get_by_test_id(f"item-{item_id}").get_by_role("button", name=name, exact=True).click()
            expect(page.get_by_test_id("item-detail").get_by_role("heading")).to_have_text(name)
        page.get_by_role("button", name="Favourite Ceramic dripper", exact=True).click()
        register_and_login(page, PEOPLE[-1])
        expect(page.get_by_role("list", name="All users").get_by_role("listitem")).to_have_count(len(PEOPLE))
        expect_cart(page, {1: 1, 4: 2})
        expect(page.get_by_role("list", name="Recommended for you").get_by_role("listitem")).to_have_count(4)
        page.evaluate("() => document.activeElement?.blur()")  # no focus ring in the picture
        page.screenshot(path=output)
        browser.close()
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
