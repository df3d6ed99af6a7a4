"""Personalisation in the SPA, in a real Chromium against a real uvicorn (see conftest.py):
item details, the favourite toggle, "Recently viewed", "Recommended for you", the sort selector
and the theme switch, before sign-in, after registering and logging in, and in a second browser."""

from __future__ import annotations

from collections.abc import Callable

from browser_support import Server, catalogue_loaded, login, register_and_login, unique_username
from playwright.sync_api import Page, expect


def open_item(page: Page, item_id: int, name: str) -> None:
    page.get_by_test_id(f"item-{item_id}").get_by_role("button", name=name, exact=True).click()
    expect(page.get_by_test_id("item-detail").get_by_role("heading")).to_have_text(name)


def expect_personalised(page: Page) -> None:
    """What the visitor did in test_..._follow_the_visitor: shown wherever it logs in."""
    catalogue_loaded(page)
    recent = page.get_by_role("list", name="Recently viewed").get_by_role("listitem")
    expect(recent).to_have_text(["Paper filters (100)", "Ceramic dripper"])
    expect(page.get_by_role("button", name="Favourite Ceramic dripper", exact=True)).to_have_attribute(
        "aria-pressed", "true")
    expect(page.get_by_role("button", name="Favourite Pour-over kettle", exact=True)).to_have_attribute(
        "aria-pressed", "false")
    recommended = page.get_by_role("list", name="Recommended for you").get_by_role("listitem")
    expect(recommended).to_have_text(["Pour-over kettle", "French press", "Moka pot", "AeroPress"])
    expect(page.get_by_label("Theme")).to_have_value("dark")
    expect(page.locator("html")).to_have_attribute("data-theme", "dark")
    expect(page.get_by_label("Sort by")).to_have_value("price")
    prices = page.get_by_role("list", name="Items").locator(".price").all_inner_texts()
    assert [float(p.lstrip("$")) for p in prices] == sorted(float(p.lstrip("$")) for p in prices)


def test_views_favourite_and_theme_follow_the_visitor(make_page: Callable[[str], Page], server: Server) -> None:
    page = make_page(server.url)
    page.goto("/")
    catalogue_loaded(page)
    expect(page.get_by_test_id("recently-viewed")).to_contain_text("Nothing viewed yet")
    expect(page.get_by_test_id("recommended")).to_contain_text("View or favourite")

    open_item(page, 3, "Ceramic dripper")
    expect(page.get_by_test_id("detail-category")).to_have_text("brewing")
    open_item(page, 4, "Paper filters (100)")
    favourite = page.get_by_role("button", name="Favourite Ceramic dripper", exact=True)
    expect(favourite).to_have_attribute("aria-pressed", "false")
    favourite.click()
    expect(favourite).to_have_attribute("aria-pressed", "true")
    page.get_by_label("Theme").select_option("dark")
    expect(page.locator("html")).to_have_attribute("data-theme", "dark")
    page.get_by_label("Sort by").select_option("price")
    expect_personalised(page)

    page.reload()  # kept by the server, not the page
    expect_personalised(page)

    name = unique_username()
    register_and_login(page, name)
    expect(page.get_by_test_id("greeting")).to_contain_text(f"Hello, {name}!")
    expect_personalised(page)

    other = make_page(server.url)  # another browser: nothing in its storage
    other.goto("/")
    catalogue_loaded(other)
    expect(other.get_by_label("Theme")).to_have_value("system")
    login(other, name)
    expect(other.get_by_test_id("current-user")).to_have_text(name)
    expect_personalised(other)
