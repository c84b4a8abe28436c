"""OpenAI's generic HTTP objects, used by the bridge's routes (`producer/http`) and by the
batch and file routes (`scheduler/api`) alike: a page of a list, and a deletion's answer.
Pure: no I/O."""

from __future__ import annotations

from typing import Generic, TypeVar

import msgspec

T = TypeVar("T")


class ListPage(msgspec.Struct, Generic[T], frozen=True):
    """OpenAI's list object: one page of files, batches or a response's input items."""

    data: list[T]
    first_id: str | None
    last_id: str | None
    has_more: bool
    object: str = "list"


class Deleted(msgspec.Struct, frozen=True):
    """The answer to a DELETE: `object` names what was deleted ("file", "response", ...)."""

    id: str
    object: str
    deleted: bool = True
