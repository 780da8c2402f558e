"""``agentbus status`` prints names from the wire as text: rich markup and control characters are defused."""

from __future__ import annotations

import io

from rich.console import Console

from agents.cli.status import KindRow, Snapshot, print_snapshot, safe
from bus.messages import StateReport, TenantUsage

EVIL = "[red]x\x1b[2J[/red][link=http://e]y\x07"


def render(snap: Snapshot) -> str:
    out = io.StringIO()
    print_snapshot(Console(file=out, width=400, force_terminal=False, color_system=None), snap)
    return out.getvalue()


def test_safe_escapes_markup_and_replaces_controls() -> None:
    assert safe("plain-tenant_1") == "plain-tenant_1"
    assert "\x1b" not in safe(EVIL)
    assert "\u202e" not in safe("a\u202eb")
    assert Console().render_str(safe(EVIL)).plain == "[red]x?[2J[/red][link=http://e]y?"


def test_every_wire_name_in_the_tables_is_printed_as_text() -> None:
    state = StateReport(
        worker=f"w-{EVIL}",
        replica=f"r-{EVIL}",
        gossip=False,
        peers=0,
        tenants={f"t-{EVIL}": TenantUsage(tasks_completed=1)},
        tenants_total=1,
        live_agents=[f"a-{EVIL}"],
    )
    snap = Snapshot(
        queued={f"{EVIL}/{EVIL}": 3},
        dead_letters={},
        kinds=[KindRow(f"k-{EVIL}", 3, 0, 0, 0, 0.0)],
        published_per_s=0.0,
        completed_per_s=0.0,
        tasks_total=3,
        dlq_total=0,
        state=state,
    )
    text = render(snap)
    assert "\x1b" not in text
    assert "\x07" not in text
    shown = "[red]x?[2J[/red][link=http://e]y?"
    for prefix in ("w-", "r-", "t-", "a-", "k-", ""):
        assert prefix + shown in text, (prefix, text)
