"""Reads of files, always scoped to one team: another team's file is indistinguishable from a missing one."""

from __future__ import annotations

from typing import BinaryIO

from django.db.models import Q, QuerySet
from django.utils import timezone

from tailor.core.errors import InvalidRequest, NotFound
from tailor.core.objectstore import object_store
from tailor.core.pagination import CursorPage, Order, cursor_page
from tailor.files.models import File
from tailor.teams.models import Team

MAX_LIST_LIMIT = 10_000


def _visible(*, team: Team) -> QuerySet[File]:
    # Deleted and expired files are gone as far as clients can tell.
    return (
        File.objects.filter(team=team)
        .exclude(status=File.Status.DELETED)
        .filter(Q(expires_at__isnull=True) | Q(expires_at__gt=timezone.now()))
    )


def file_get(*, team: Team, file_id: str) -> File:
    """The team's file with this public id, or NotFound."""
    file = _visible(team=team).filter(public_id=file_id).first()
    if file is None:
        raise NotFound.for_object("File", file_id)
    return file


def file_list(
    *,
    team: Team,
    after: str | None = None,
    limit: int = MAX_LIST_LIMIT,
    order: Order = "desc",
    purpose: str | None = None,
) -> CursorPage[File]:
    """One page of the team's files in creation order, after the file whose id is `after`."""
    cursor = None
    if after:
        # The cursor may name a file deleted since the previous page; its position still counts.
        cursor = File.objects.filter(team=team, public_id=after).only("pk").first()
        if cursor is None:
            raise InvalidRequest(
                f"No such File object for cursor `after`: {after}", param="after", code="invalid_cursor"
            )
    queryset = _visible(team=team)
    if purpose:
        queryset = queryset.filter(purpose=purpose)
    return cursor_page(queryset, after=cursor, limit=limit, order=order)


def file_open_content(*, file: File) -> BinaryIO:
    """A streaming reader over the file's bytes in the object store."""
    return object_store().open(file.storage_key)


def file_storage_key(*, team: Team, file_id: str) -> str:
    """Where a team's upload lives in the object store."""
    return f"teams/{team.pk}/files/{file_id}"
