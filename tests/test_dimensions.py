"""items and users: validation, last-row-wins updates, quarantine and checks."""

import json

from tests.ingest_helpers import check_results, ingest_dimensions, query, write


def test_items_and_users_validate_update_and_quarantine(home, instance):
    write(home / "landing" / "items" / "a.jsonl", "\n".join([
        json.dumps({"item_id": "i1", "title": "Red &amp; Blue", "categories": ["Guitars", " Electric "], "price": 199}),
        json.dumps({"item_id": "i2", "categories": "Drums | Kits", "price": "12.50", "colour": "black"}),
        json.dumps({"item_id": "i3", "categories": {"not": "a list"}}),
        json.dumps({"item_id": "i4", "price": -1}),
        json.dumps({"title": "no id"}),
        json.dumps({"item_id": "i5", "description": "ask me: shop@example.com"}),
    ]) + "\n")
    write(home / "landing" / "items" / "b.csv", "item_id,title,categories\ni1,Red guitar v2,Guitars|Electric\n")
    write(home / "landing" / "users" / "users.csv", "user_id,age,email\nu1,31,a@b.com\n,40,x@y.org\nu1,32,\n")

    result = ingest_dimensions(home, instance)
    assert result.success
    assert all(check_results(result).values()), check_results(result)

    items = {r[0]: r[1:] for r in query(home, "SELECT item_id, title, categories, price, description, attributes FROM items")}
    assert set(items) == {"i1", "i2", "i5"}
    assert items["i1"][:2] == ("Red guitar v2", ["Guitars", "Electric"])  # the later file wins
    assert items["i2"][1:3] == (["Drums", "Kits"], 12.5) and json.loads(items["i2"][4]) == {"colour": "black"}
    assert items["i5"][3] == "ask me: [email]"
    reasons = set(query(home, "SELECT source, line_no, reason, field FROM quarantine"))
    assert reasons == {("items", 3, "bad_categories", "categories"), ("items", 4, "bad_price", "price"),
                       ("items", 5, "missing_field", "item_id"), ("users", 3, "missing_field", "user_id")}
    assert query(home, "SELECT user_id, attributes FROM users") == [("u1", '{"age":"32"}')]
    stats = dict((s, r) for s, *r in query(home, "SELECT source, rows_read, loaded, duplicates, quarantined FROM ingest_stats"))
    assert stats == {"items": [7, 3, 1, 3], "users": [3, 1, 1, 1]}


def test_rebuilding_dimensions_is_idempotent(home, instance):
    write(home / "landing" / "items" / "a.csv", "item_id,categories,price\ni1,A|B,3\ni2,C,\n")
    ingest_dimensions(home, instance)
    first = query(home, "SELECT * FROM items ORDER BY item_id")
    ingest_dimensions(home, instance)
    assert query(home, "SELECT * FROM items ORDER BY item_id") == first
    assert query(home, "SELECT count(*) FROM ingest_stats WHERE source = 'items'") == [(1,)]
