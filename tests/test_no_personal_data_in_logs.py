"""No contact detail and no secret reaches a log, a run's events or asset metadata.

The demo shop's chats leak e-mail addresses and phone numbers on purpose, and a file of
support chats full of them lands beside its first day. After a whole
`portrait run`, every byte the Dagster instance stored (run and event logs, asset metadata
with its previews, compute logs) and everything the command printed is searched for each
planted address and number, and for the salt of the erasure audit's user hashes.
"""

import json
import re
from pathlib import Path

import pytest

from orchestration.cli import main
from orchestration.importers.demo import generate_demo
from resources.landing import LandingZone
from tests.ingest_helpers import query

pytestmark = pytest.mark.slow

SUPPORT_CONTACTS = ("maria.lopez@example.com", "+1 555 201 3344", "13800138000", "(555) 987-6543")
EMAIL = re.compile(rb"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
PHONE = re.compile(rb"\+?\(?\d[\d ().-]{7,}\d")


def planted(landing: Path) -> set[bytes]:
    """The e-mail addresses and phone numbers written in the chats of the landing files."""
    found: set[bytes] = set()
    for path in landing.rglob("*.jsonl"):
        for line in path.read_text().splitlines():
            try:
                event = json.loads(line)
            except ValueError:  # the demo's hostile rows
                continue
            text = str(event.get("text") or "").encode() if event.get("event_type") == "chat" else b""
            found |= set(EMAIL.findall(text)) | {p for p in PHONE.findall(text) if len(re.sub(rb"\D", b"", p)) >= 9}
    return found


def stored_bytes(folder: Path) -> list[tuple[Path, bytes]]:
    return [(path, path.read_bytes()) for path in folder.rglob("*") if path.is_file()]


def test_a_whole_run_writes_no_contact_detail_or_secret_to_logs_or_metadata(home, capsys):
    generate_demo(LandingZone(root=str(home / "landing")), users=80, items=60, days=8, seed=11)
    first_day = sorted((home / "landing" / "events").iterdir())[0]
    user = json.loads((first_day / "demo-events.jsonl").read_text().splitlines()[0])["user_id"]
    chats = [f"Reach me at {contact}, thanks" for contact in SUPPORT_CONTACTS]
    (first_day / "support-chats.jsonl").write_text("".join(
        json.dumps({"event_id": f"support-{i}", "user_id": user, "event_type": "chat", "text": text,
                    "ts": f"{first_day.name[5:]}T12:00:0{i}Z"}) + "\n" for i, text in enumerate(chats)))
    contacts = planted(home / "landing")
    assert {c.encode() for c in SUPPORT_CONTACTS} <= contacts

    assert main(["run"]) == 0
    (user,), = query(home, "SELECT min(user_id) FROM events")
    assert main(["forget", user, "--reason", "asked by mail from jane.roe@example.org"]) == 0
    contacts.add(b"jane.roe@example.org")
    printed = capsys.readouterr()
    instance_files = stored_bytes(home / "dagster")
    assert any(path.suffix == ".db" for path, _ in instance_files)  # the runs were recorded here
    assert any(b"ASSET_MATERIALIZATION" in data for _, data in instance_files)

    secrets = [path.read_bytes().strip() for path in home.glob("*.salt")]
    assert secrets, "portrait forget keeps its salt in the home folder"
    leaks = []
    for needle in [*contacts, *secrets]:
        for path, data in instance_files:
            if needle in data:
                leaks.append(f"{needle!r} in {path.relative_to(home)}")
        if needle in (printed.out + printed.err).encode():
            leaks.append(f"{needle!r} printed by portrait run")
    assert not leaks, leaks
    # the texts did arrive, masked: the same chats are in the warehouse with placeholders
    assert query(home, "SELECT count(*) FROM events WHERE text LIKE '%[email]%' OR text LIKE '%[phone]%'")[0][0] > 0
