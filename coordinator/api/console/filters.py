"""The transaction list's filters: read from the page's query string (so a filtered list is a
link that can be shared and survives a reload), checked, and turned into a ListFilter."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import parse_qsl, urlencode

import pydantic
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from coordinator.api.problems import BadRequest, describe_validation
from coordinator.api.wire import decode_cursor
from coordinator.core.records import ListFilter
from coordinator.core.states import GlobalStatus, TransactionKind
from coordinator.dialects.registry import names as dialect_names

# The names of the query parameters, in the order the form shows them.
FILTER_FIELDS = (
    "kind",
    "status",
    "service",
    "dialect",
    "created_from",
    "created_to",
    "gid",
    "limit",
)
PAGE_SIZES = (25, 50, 100, 200)

GidPrefix = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._:-]{1,128}$")]


class ListForm(BaseModel):
    """The list page's query string. Unknown parameters are ignored (a link with an extra
    parameter still opens); empty fields mean 'any'."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    kind: TransactionKind | None = Field(default=None, description="tcc, saga or msg")
    status: GlobalStatus | None = None
    service: str | None = Field(default=None, min_length=1, max_length=200)
    dialect: str | None = None
    created_from: datetime | None = None
    created_to: datetime | None = None
    gid: GidPrefix | None = Field(default=None, description="Prefix of the gid")
    cursor: str | None = Field(default=None, max_length=400)
    limit: int = Field(default=50, ge=1, le=200)

    @field_validator("*", mode="before")
    @classmethod
    def _blank_is_any(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("dialect")
    @classmethod
    def _known_dialect(cls, value: str | None) -> str | None:
        if value is not None and value not in dialect_names():
            raise ValueError(f"one of {', '.join(dialect_names())}")
        return value

    @field_validator("created_from", "created_to")
    @classmethod
    def _utc_when_no_zone(cls, value: datetime | None) -> datetime | None:
        # The form's date-time inputs carry no zone; the page says they are UTC.
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value

    def to_filter(self) -> ListFilter:
        try:
            after = decode_cursor(self.cursor) if self.cursor else None
        except BadRequest:
            raise ValueError(
                "not a cursor this page made; start again from the first page"
            ) from None
        return ListFilter(
            statuses=(self.status,) if self.status else None,
            service=self.service,
            created_from=self.created_from,
            created_to=self.created_to,
            after=after,
            limit=self.limit,
            dialect=self.dialect,
            kind=self.kind,
            gid_prefix=self.gid,
        )

    def query(self, **changes: Any) -> str:
        """This list's query string, with some parameters changed (None drops one)."""
        values: dict[str, Any] = {
            "kind": self.kind.value if self.kind else None,
            "status": self.status.value if self.status else None,
            "service": self.service,
            "dialect": self.dialect,
            "created_from": _form_time(self.created_from),
            "created_to": _form_time(self.created_to),
            "gid": self.gid,
            "limit": self.limit if self.limit != 50 else None,
            "cursor": self.cursor,
        }
        values.update(changes)
        return urlencode({k: v for k, v in values.items() if v is not None})

    @property
    def filtered(self) -> bool:
        return any(
            v is not None
            for v in (
                self.kind,
                self.status,
                self.service,
                self.dialect,
                self.created_from,
                self.created_to,
                self.gid,
            )
        )


def _form_time(value: datetime | None) -> str | None:
    """A time as the form's date-time input shows it (UTC, to the second)."""
    if value is None:
        return None
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")


@dataclass(frozen=True, slots=True)
class ListRequest:
    """The list page's query string read: the form's values to show again (as typed, when
    they are wrong), the form, the filter it asks for (None if it cannot be read), and
    what is wrong, field by field."""

    values: dict[str, str]
    form: ListForm
    filter: ListFilter | None
    errors: list[dict[str, str]]


def read_list_form(query: Mapping[str, str]) -> ListRequest:
    raw = {name: query[name] for name in (*FILTER_FIELDS, "cursor") if name in query}
    try:
        form = ListForm.model_validate(raw)
    except pydantic.ValidationError as exc:
        _, errors = describe_validation(exc)
        return ListRequest(raw, ListForm(), None, errors)
    values = dict(parse_qsl(form.query(cursor=None, limit=form.limit)))
    try:
        return ListRequest(values, form, form.to_filter(), [])
    except ValueError as exc:
        errors = [{"field": "cursor", "message": str(exc)}]
        return ListRequest(values, form.model_copy(update={"cursor": None}), None, errors)
