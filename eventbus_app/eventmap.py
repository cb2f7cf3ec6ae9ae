"""The event map, "what happens when X?": for each event type the handlers it goes to (from
the registry), and the event types each handler has been seen to emit (from
``OutboxEvent.emitted_by``, which ``emit()`` records inside a handler). Flags handlers that
exist but never ran and event types nobody handles ("ghost handlers" and dead ends).

:func:`build` returns an :class:`EventMap`; ``manage.py eventbus_graph`` prints it as
Mermaid, and a console page can draw the same object."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.db import DEFAULT_DB_ALIAS
from django.db.models import Count

from .events import registered_event_types
from .models import Delivery, OutboxEvent
from .registry import all_handlers, handlers_for

# The dispatcher's pseudo-handler of events whose class is gone: not a real handler.
_PSEUDO = "eventbus_app.unroutable"


@dataclass
class EventMap:
    # Every event type known here: declared classes, and types found in the outbox.
    event_types: list[str] = field(default_factory=list)
    handlers: list[str] = field(default_factory=list)
    # event type → the handlers it is delivered to (this code's registry).
    handles: dict[str, list[str]] = field(default_factory=dict)
    # handler → {event type it emitted: how many events}.
    emits: dict[str, dict[str, int]] = field(default_factory=dict)
    # Registered handlers without a single attempt recorded.
    never_ran: list[str] = field(default_factory=list)
    # Event types no registered handler takes (declared, or stored by someone).
    unhandled: list[str] = field(default_factory=list)
    # Event types stored in the outbox that no class here declares.
    undeclared: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "event_types": self.event_types,
            "handlers": self.handlers,
            "handles": self.handles,
            "emits": self.emits,
            "never_ran": self.never_ran,
            "unhandled": self.unhandled,
            "undeclared": self.undeclared,
        }

    def mermaid(self) -> str:
        """A Mermaid flowchart: event types as rectangles, handlers as rounded boxes;
        ``event --> handler``, ``handler -- emits n --> event``."""
        ids: dict[tuple[str, str], str] = {}

        def node(kind: str, name: str) -> str:
            key = (kind, name)
            if key not in ids:
                ids[key] = f"{kind[0]}{len(ids) + 1}"
            return ids[key]

        lines = ["flowchart LR"]
        for event_type in self.event_types:
            label = event_type
            if event_type in self.unhandled:
                label += " (no handler)"
            if event_type in self.undeclared:
                label += " (no class)"
            lines.append(f'    {node("event", event_type)}["{_label(label)}"]')
        for name in self.handlers:
            label = name + (" (never ran)" if name in self.never_ran else "")
            lines.append(f'    {node("handler", name)}("{_label(label)}")')
        for event_type, names in self.handles.items():
            for name in names:
                lines.append(f"    {node('event', event_type)} --> {node('handler', name)}")
        for name, emitted in self.emits.items():
            for event_type, count in emitted.items():
                lines.append(
                    f"    {node('handler', name)} -- emits {count} --> {node('event', event_type)}"
                )
        lines += [
            "    classDef event fill:#eef4ff,stroke:#3c6ecf",
            "    classDef handler fill:#f4fff0,stroke:#3f8f3f",
            "    classDef flagged fill:#fff4e5,stroke:#c66a00,stroke-dasharray:4 3",
        ]
        groups = {
            "event": [i for (kind, _), i in ids.items() if kind == "event"],
            "handler": [i for (kind, _), i in ids.items() if kind == "handler"],
            "flagged": [ids[("handler", n)] for n in self.never_ran]
            + [ids[("event", t)] for t in self.unhandled],
        }
        for css, members in groups.items():
            if members:
                lines.append(f"    class {','.join(members)} {css}")
        return "\n".join(lines) + "\n"


def _label(text: str) -> str:
    # Mermaid labels are quoted: a quote inside would end them.
    return text.replace('"', "#quot;")


def build(using: str = DEFAULT_DB_ALIAS) -> EventMap:
    """The map from this process's registry and what database ``using`` has seen."""
    declared = registered_event_types()
    specs = {name: spec for name, spec in all_handlers().items() if name != _PSEUDO}
    events = OutboxEvent.objects.using(using)
    stored = set(events.order_by().values_list("event_type", flat=True).distinct())
    emitted_rows = (
        events.exclude(emitted_by="")
        .order_by()
        .values("emitted_by", "event_type")
        .annotate(n=Count("id"))
    )
    emits: dict[str, dict[str, int]] = {}
    for row in emitted_rows:
        emits.setdefault(row["emitted_by"], {})[row["event_type"]] = row["n"]

    handles: dict[str, list[str]] = {}
    for event_type in sorted(set(declared) | stored):
        cls = declared.get(event_type)
        names = sorted(s.name for s in handlers_for(cls) if s.name in specs) if cls else []
        if cls is None:  # stored only: handlers matching its type by pattern (relays)
            names = sorted(n for n, s in specs.items() if _matches_type(s, event_type))
        handles[event_type] = names

    ran = set(
        Delivery.objects.using(using)
        .filter(handler__in=list(specs), attempts__gt=0)
        .order_by()
        .values_list("handler", flat=True)
        .distinct()
    )
    handler_names = sorted(set(specs) | set(emits))
    event_types = sorted(set(handles) | {t for e in emits.values() for t in e})
    return EventMap(
        event_types=event_types,
        handlers=handler_names,
        handles={t: names for t, names in handles.items() if names},
        emits={name: dict(sorted(e.items())) for name, e in sorted(emits.items())},
        never_ran=sorted(set(specs) - ran),
        unhandled=[t for t in event_types if not handles.get(t)],
        undeclared=sorted(t for t in event_types if t not in declared),
    )


def _matches_type(spec: Any, event_type: str) -> bool:
    import fnmatch

    return any(fnmatch.fnmatchcase(event_type, p) for p in spec.event_types)
