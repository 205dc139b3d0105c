"""Hooks shared by every resource: pagination links without counting."""


def on_fetched_resource(resource: str, response: dict) -> None:
    """Drop the `next` link from a short page.

    Lists skip counting (OPTIMIZE_PAGINATION_FOR_SPEED), so Eve always offers a
    next page; a page with fewer items than asked for is the last one.
    """
    page_size = response.get("_meta", {}).get("max_results")
    links = response.get("_links", {})
    if page_size is not None and len(response.get("_items", [])) < page_size:
        links.pop("next", None)


def on_fetched_item(resource: str, response: dict) -> None:
    """An item is not a page: no pagination links (Eve adds them when the query string
    carries an argument it does not know, such as ?wait=)."""
    links = response.get("_links", {})
    for name in ("next", "prev", "last"):
        links.pop(name, None)
