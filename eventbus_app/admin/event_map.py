"""The event map page, "what happens when X?": event types on the left, handlers on the
right, an arrow from each type to the handlers it goes to and a dashed one from each
handler back to the types it was seen to emit; ghost handlers (never ran) and dead-end
types (no handler) flagged. Drawn as inline SVG by the server: no script, no CDN. The
graph itself comes from ``eventbus_app.eventmap.build()`` (``manage.py eventbus_graph``
prints the same as Mermaid). Its URL hangs under the events admin."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.db import router
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path

from ..eventmap import EventMap, build
from ..models import OutboxEvent

ROW = 34  # px between two nodes of a column
LEFT_X, RIGHT_X, WIDTH, NODE_W = 20, 470, 760, 270


def layout(graph: EventMap) -> dict[str, Any]:
    """Node boxes and edge paths, in SVG coordinates (the template only draws them)."""
    types = {name: 20 + i * ROW for i, name in enumerate(graph.event_types)}
    handlers = {name: 20 + i * ROW for i, name in enumerate(graph.handlers)}
    nodes = [
        {
            "x": LEFT_X,
            "y": y,
            "label": name,
            "kind": "event",
            "flag": "no handler" if name in graph.unhandled else "",
        }
        for name, y in types.items()
    ] + [
        {
            "x": RIGHT_X,
            "y": y,
            "label": name,
            "kind": "handler",
            "flag": "never ran" if name in graph.never_ran else "",
        }
        for name, y in handlers.items()
    ]
    edges: list[dict[str, Any]] = []
    for event_type, names in graph.handles.items():
        for name in names:
            if event_type in types and name in handlers:
                y1, y2 = types[event_type] + 12, handlers[name] + 12
                x1, x2 = LEFT_X + NODE_W, RIGHT_X
                mid = (x1 + x2) // 2
                edges.append(
                    {"d": f"M{x1},{y1} C{mid},{y1} {mid},{y2} {x2},{y2}", "kind": "handles"}
                )
    for name, emitted in graph.emits.items():
        for event_type, count in emitted.items():
            if event_type in types and name in handlers:
                y1, y2 = handlers[name] + 12, types[event_type] + 12
                x1, x2 = RIGHT_X + NODE_W, LEFT_X
                # Back around the right edge and across the top: clear of the other arrows.
                top = min(y1, y2) - 14
                edges.append(
                    {
                        "d": f"M{x1},{y1} C{x1 + 40},{y1} {x1 + 40},{top} {(x1 + x2) // 2},{top}"
                        f" S{x2 - 40},{y2} {x2},{y2}",
                        "kind": "emits",
                        "label": f"emits {count}",
                        "lx": (x1 + x2) // 2,
                        "ly": top - 3,
                    }
                )
    height = 40 + ROW * max(len(types), len(handlers), 1)
    return {"nodes": nodes, "edges": edges, "width": WIDTH, "height": height, "node_w": NODE_W}


class EventMapPage(admin.ModelAdmin):
    """Mixed into the events admin, which hosts the page's URL."""

    def event_map_urls(self) -> list[URLPattern]:
        return [
            path(
                "event-map/",
                self.admin_site.admin_view(self.event_map_view),
                name="eventbus_app_event_map",
            )
        ]

    def event_map_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        graph = build(router.db_for_read(OutboxEvent))
        context: dict[str, Any] = {
            **self.admin_site.each_context(request),
            "title": "What happens when…? The event map",
            "opts": self.opts,
            "graph": graph,
            "svg": layout(graph),
            "mermaid": graph.mermaid(),
        }
        return TemplateResponse(request, "admin/eventbus_app/event_map.html", context)
