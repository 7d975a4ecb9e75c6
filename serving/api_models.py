"""The bodies of the online service's API (`serving.service`): what a request may hold and what an answer looks like.

FastAPI validates a request against these models before a route runs, so hostile input gets a 422 naming the field
before any work: ids longer than `serving.max_id_length`, lists longer than `serving.max_batch`, and event timestamps
outside [now - `serving.event_max_age_days`, now + `serving.event_future_seconds`]. The limits come from the
workspace through `Limits`, which `serving.middleware.RequestLimits` publishes per request. The answer models are
what the OpenAPI schema says of each error (`responses`); the answers themselves are built in `serving.middleware`
and `serving.service`.
"""

from __future__ import annotations

import contextvars
import datetime as dt
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from persona.config import ServingConfig
from serving.online import EVENT_TYPES, Customer
from training.explain import DEFAULT_FACTORS, MAX_FACTORS

CATEGORY_PATTERN = r"^[a-z0-9_\-]{1,64}$"
MAX_TYPE_CHARS = 64  # an identifier type is a key of persona.yaml


# --- limits -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Limits:
    """The request limits of `serving.*` that the body models check while FastAPI validates a request."""

    max_id_length: int
    max_batch: int
    event_max_age_days: float
    event_future_seconds: float

    @classmethod
    def of(cls, cfg: ServingConfig) -> Limits:
        return cls(cfg.max_id_length, cfg.max_batch, cfg.event_max_age_days, cfg.event_future_seconds)


# Set per request by `serving.middleware.RequestLimits` (the workspace's settings), read by the validators below:
# FastAPI validates a body before the route runs and passes no context to pydantic, and these checks must come before
# any work (a list of 50,000 customers costs ~1 s to validate item by item; the length check before it costs nothing).
REQUEST_LIMITS: contextvars.ContextVar[Limits] = contextvars.ContextVar("persona_request_limits")
_DEFAULT_LIMITS = Limits.of(ServingConfig())


def _limits() -> Limits:
    return REQUEST_LIMITS.get(_DEFAULT_LIMITS)


def _short_id(value: object) -> object:
    limit = _limits().max_id_length
    if isinstance(value, str) and len(value) > limit:
        raise ValueError(f"{len(value)} characters, at most {limit} (serving.max_id_length)")
    return value


def _few(items: object) -> object:
    limit = _limits().max_batch
    if isinstance(items, list) and len(items) > limit:
        raise ValueError(f"{len(items)} given, at most {limit} per call (serving.max_batch); split the request")
    return items


# --- request bodies --------------------------------------------------------------------------------------------
class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt key is a 422 naming it, not silently ignored


class Identifier(_Body):
    type: str = Field(max_length=MAX_TYPE_CHARS,
                      description="an identity type of the workspace: member_id, phone, email, device_id, ...")
    value: str = Field(min_length=1, description="at most serving.max_id_length characters (default 128)")
    hashed: bool = Field(False, description="value is already the salted SHA-256 of the normalised identifier")

    @field_validator("value", mode="before")
    @classmethod
    def _value_length(cls, value: object) -> object:
        return _short_id(value)


# "Exactly one of persona_id or identifier" in JSON Schema: each branch requires its key with a non-null value, so a
# body with both (or neither) matches two branches (or none), as the validator below decides.
_ONE_OF = {"oneOf": [{"required": ["persona_id"], "properties": {"persona_id": {"type": "string"}}},
                     {"required": ["identifier"], "properties": {"identifier": {"type": "object"}}}]}


class CustomerRef(_Body):
    """A customer: exactly one of `persona_id` or `identifier`."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_ONE_OF)

    persona_id: str | None = Field(None, min_length=1,
                                   description="at most serving.max_id_length characters (default 128)")
    identifier: Identifier | None = None

    @field_validator("persona_id", mode="before")
    @classmethod
    def _id_length(cls, value: object) -> object:
        return _short_id(value)

    @model_validator(mode="after")
    def _one_of(self) -> CustomerRef:
        if (self.persona_id is None) == (self.identifier is None):
            raise ValueError("give exactly one of 'persona_id' or 'identifier': {'type': ..., 'value': ...}")
        return self

    def customer(self) -> Customer:
        if self.persona_id is not None:
            return Customer(persona_id=self.persona_id)
        ident = self.identifier
        return Customer(id_type=ident.type, value=ident.value, hashed=ident.hashed)


class ProfileRequest(CustomerRef):
    """/v1/profile: a customer, and whether to explain each model score."""

    # Strict: `"explain": "no"` or `1` is a 422, not a guess at what was meant.
    explain: bool = Field(False, strict=True,
                          description="add `explanations`: each model output's top factors (feature, value, signed "
                                      "contribution, and the scale they are in)")
    factors: int = Field(DEFAULT_FACTORS, ge=1, le=MAX_FACTORS, description="factors per output, with explain")

    @model_validator(mode="after")
    def _factors_need_explain(self) -> ProfileRequest:
        if "factors" in self.model_fields_set and not self.explain:
            raise ValueError("'factors' is the number of factors to explain each score by: send it with "
                             "'explain': true")
        return self


class ScoreRequest(_Body):
    customers: list[CustomerRef] = Field(min_length=1, description="at most serving.max_batch (default 1000)")

    @field_validator("customers", mode="before")
    @classmethod
    def _cap(cls, items: object) -> object:
        return _few(items)


class RecommendRequest(CustomerRef):
    n: int = Field(5, ge=1, le=100)
    exclude_days: int | None = Field(None, ge=0, le=3650, description="default: serving.recommend_exclude_days")


class Event(CustomerRef):
    event_type: Literal[EVENT_TYPES]  # type: ignore[valid-type]
    category: str | None = Field(None, pattern=CATEGORY_PATTERN,
                                 description="a lowercase token; when the interest model is loaded, one of its "
                                             "categories (the outputs interest_<category>)")
    timestamp: dt.datetime | None = Field(
        None, description="ISO 8601; naive is UTC; default: now. At most serving.event_max_age_days old (default 7) "
                          "and serving.event_future_seconds ahead (default 300: client clocks drift)")

    @field_validator("timestamp")
    @classmethod
    def _recent(cls, ts: dt.datetime | None) -> dt.datetime | None:
        if ts is None:
            return None
        try:
            utc = as_utc(ts)  # year 1 at +08:00 is before year 1 in UTC
        except (OverflowError, ValueError):
            raise ValueError("out of range") from None
        limits = _limits()
        now = dt.datetime.now(dt.timezone.utc)
        if (utc - now).total_seconds() > limits.event_future_seconds:
            raise ValueError(f"in the future (now is {now.isoformat(timespec='seconds')}; "
                             f"serving.event_future_seconds allows {limits.event_future_seconds:g} s of clock drift)")
        if (now - utc).total_seconds() > limits.event_max_age_days * 86400:
            raise ValueError(f"older than {limits.event_max_age_days:g} days (serving.event_max_age_days); the nightly "
                             "features cover older behaviour")
        return utc


class EventsRequest(_Body):
    events: list[Event] = Field(min_length=1, description="at most serving.max_batch (default 1000)")

    @field_validator("events", mode="before")
    @classmethod
    def _cap(cls, items: object) -> object:
        return _few(items)


# --- answers ----------------------------------------------------------------------------------------------------
class ErrorBody(BaseModel):
    """Every error answer: what went wrong and what to do about it. Never a traceback, a credential or an address."""

    error: str = Field(description="short and stable: 'invalid request', 'not found', 'unauthorized', ...")
    detail: str = Field(description="what was expected, what was found, what to do")


class InvalidBody(ErrorBody):
    fields: list[str] = Field(description="dotted paths of the offending fields, e.g. 'customers.3.persona_id' or "
                                          "'events.0.timestamp'; '(body)' for the body as a whole")


class TooLargeBody(ErrorBody):
    limit_bytes: int = Field(description="serving.max_body_bytes")


class UnavailableBody(ErrorBody):
    component: str = Field(description="the backend that is down: 'online store (embedded)', 'model registry', ... "
                                       "(its address and the driver's message are in the server log only)")


def responses(*statuses: int) -> dict[int, dict]:
    """OpenAPI descriptions of the error answers a route gives (401, 413, 422, 500 and 503 for every /v1 route)."""
    known = {
        401: {"model": ErrorBody, "description": "API key missing or wrong (only when the server sets one)"},
        404: {"model": ErrorBody, "description": "no persona matches the customer given"},
        410: {"model": ErrorBody, "description": "the persona id was retired: its persona dissolved (the reason)"},
        413: {"model": TooLargeBody, "description": "body larger than serving.max_body_bytes"},
        422: {"model": InvalidBody, "description": "invalid request, naming the fields"},
        500: {"model": ErrorBody, "description": "unexpected error (the server log has it)"},
        503: {"model": UnavailableBody, "description": "a backend is down or the service is starting; retry",
              "headers": {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}}},
    }
    return {s: known[s] for s in sorted({401, 500, *statuses})}


def as_utc(ts: dt.datetime) -> dt.datetime:
    return ts.replace(tzinfo=dt.timezone.utc) if ts.tzinfo is None else ts.astimezone(dt.timezone.utc)
