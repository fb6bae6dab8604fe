"""Cursor paging as the openai SDK drives it: `after=<id of the last item>`, `limit`, `order`.

Rows are ordered by their integer primary key, which grows with creation time, so a page boundary is
stable however many rows share a `created_at` second; the public id is only the cursor's name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from django.db.models import Model, QuerySet

M = TypeVar("M", bound=Model)

Order = Literal["asc", "desc"]


@dataclass(frozen=True)
class CursorPage(Generic[M]):
    """One page of rows and whether another follows."""

    items: list[M]
    has_more: bool

    def as_payload(self, data: list[dict[str, Any]]) -> dict[str, Any]:
        """The OpenAI list object for this page, `data` being the serialized items."""
        return {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": self.has_more,
        }


def cursor_page(queryset: QuerySet[M], *, after: M | None, limit: int, order: Order) -> CursorPage[M]:
    """Return up to `limit` rows of `queryset` following the row `after`, in `order` of creation."""
    if after is not None:
        queryset = queryset.filter(pk__gt=after.pk) if order == "asc" else queryset.filter(pk__lt=after.pk)
    queryset = queryset.order_by("pk" if order == "asc" else "-pk")
    # One row more than asked tells whether a next page exists without a COUNT query.
    rows = list(queryset[: limit + 1])
    return CursorPage(items=rows[:limit], has_more=len(rows) > limit)
