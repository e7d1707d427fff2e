"""Loading and validating the rules files (YAML in BACKORDERS_RULES_DIR) into typed settings."""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from datetime import time
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from backorders.settings import rules_dir

CODE = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"
Code = Annotated[str, Field(pattern=CODE)]


class RulesError(ValueError):
    """A rules file is missing, unreadable or invalid; the message names the file, the key and the expectation."""


class RulesWarning(UserWarning):
    """A rules file is valid but asks for something risky."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_timezone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"a time zone name such as UTC or America/New_York, got {value!r}") from None
    return value


class ChannelSettings(_Strict):
    backorders_enabled: bool = True
    sources: tuple[Code, ...] = ()
    max_shipments_per_order: Annotated[int, Field(ge=1)] | None = None
    hold_incomplete_orders: bool = False
    allow_partial_lines: bool = True
    allow_split_lines: bool = True
    backorder_exception_days: Annotated[int, Field(ge=1)] = 14
    auto_cancel_after_days: Annotated[int, Field(ge=1)] | None = None
    ftc_rule: bool = False
    ship_promise_days: Annotated[int, Field(ge=1, le=365)] = 30
    timezone: str = "UTC"
    availability_message: str = "Available in under {days} days"

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        return _check_timezone(v)

    @field_validator("sources")
    @classmethod
    def _unique_sources(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(v)) != len(v):
            raise ValueError(f"each source once, got {list(v)}")
        return v

    @field_validator("availability_message")
    @classmethod
    def _message(cls, v: str) -> str:
        try:
            v.format(days=1)
        except (KeyError, IndexError, ValueError):
            raise ValueError("a text whose only placeholder is {days}") from None
        return v


class ChannelsFile(_Strict):
    defaults: dict[str, Any] = {}
    channels: dict[Code, dict[str, Any]] = {}


class PaymentMethodSettings(_Strict):
    reauthorize: bool = True
    reauth_interval_days: Annotated[int, Field(ge=1)] = 10
    authorization_validity_days: Annotated[int, Field(ge=1)] = 7
    partial_capture: bool = True


class PaymentMethodsFile(_Strict):
    defaults: dict[str, Any] = {}
    methods: dict[Code, dict[str, Any]] = {}


class ScheduleFile(_Strict):
    times: list[str] = ["06:00", "14:00", "22:00"]
    timezone: str = "UTC"

    @field_validator("times")
    @classmethod
    def _times(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("at least one time of day")
        for t in v:
            try:
                time.fromisoformat(t)
            except (TypeError, ValueError):
                raise ValueError(f'times of day as "HH:MM", got {t!r}') from None
        return v

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        return _check_timezone(v)


class PriorityMatch(_Strict):
    store: Code | None = None
    customer_segment: str | None = None
    shipping_method: str | None = None
    customer_type: str | None = None


class PriorityRule(_Strict):
    when: PriorityMatch
    tier: Annotated[int, Field(ge=0, le=1000)]


class PriorityFile(_Strict):
    default_tier: Annotated[int, Field(ge=0, le=1000)] = 100
    rules: list[PriorityRule] = []


class SafetyStockFile(_Strict):
    default: Annotated[int, Field(ge=0)] = 0
    sources: dict[Code, Annotated[int, Field(ge=0)]] = {}
    skus: dict[str, Annotated[int, Field(ge=0)]] = {}              # applies at every source
    source_skus: dict[Code, dict[str, Annotated[int, Field(ge=0)]]] = {}


CHECK_ID = r"^(extract|allocate|load)\.[a-z0-9_]{1,63}$"


class ChecksFile(_Strict):
    """checks.yaml: which data-quality checks block the run and which only warn, and how many examples to keep.

    Check ids are validated against the checks that backorders/quality.py defines (an allow-list): an unknown id
    stops the run like any unknown key."""
    examples: Annotated[int, Field(ge=0, le=20)] = 5
    checks: dict[Annotated[str, Field(pattern=CHECK_ID)], Literal["block", "warn"]] = {}

    @field_validator("checks")
    @classmethod
    def _known(cls, v: dict[str, str]) -> dict[str, str]:
        from backorders.quality import check_ids

        unknown = sorted(set(v) - set(check_ids()))
        if unknown:
            raise ValueError(f"ids of the checks in backorders/quality.py, got unknown {unknown}")
        return v

    def action(self, check_id: str, default: str) -> str:
        return self.checks.get(check_id, default)


class OutboxDelivery(_Strict):
    """How the outboxes are delivered: attempts, backoff between them, and which runs deliver at all."""
    max_attempts: Annotated[int, Field(ge=1, le=100)] = 5
    backoff_seconds: Annotated[float, Field(gt=0)] = 60.0
    backoff_factor: Annotated[float, Field(ge=1)] = 2.0
    backoff_max_seconds: Annotated[float, Field(gt=0)] = 3600.0
    window_days: Annotated[float, Field(ge=0)] = 2.0

    @model_validator(mode="after")
    def _max(self):
        if self.backoff_max_seconds < self.backoff_seconds:
            raise ValueError(f"backoff_max_seconds ({self.backoff_max_seconds}) at least backoff_seconds "
                             f"({self.backoff_seconds})")
        return self

    def backoff(self, attempts: int) -> float:
        """Seconds to wait after the given number of failed attempts (1, 2, ...) before the next one."""
        return min(self.backoff_seconds * self.backoff_factor ** max(attempts - 1, 0), self.backoff_max_seconds)


class OutboxEmail(_Strict):
    sender: str = "Backorders <backorders@example.com>"
    timeout_seconds: Annotated[float, Field(gt=0)] = 30.0

    @field_validator("sender")
    @classmethod
    def _sender(cls, v: str) -> str:
        from email.utils import parseaddr

        addr = parseaddr(v)[1]
        if "@" not in addr or any(c in v for c in "\r\n"):
            raise ValueError(f'an email address such as "Shop <orders@example.com>", got {v!r}')
        return v


class OutboxPayments(_Strict):
    endpoint: str = "/payment-requests"
    connect_timeout_seconds: Annotated[float, Field(gt=0)] = 5.0
    read_timeout_seconds: Annotated[float, Field(gt=0)] = 30.0
    refund_due_working_days: Annotated[int, Field(ge=0, le=60)] = 7


class OutboxShipmentMessages(_Strict):
    enabled: bool = True
    folder: str | None = None      # relative to the project folder; null: the messages wait in oms.shipment_messages


class OutboxFile(_Strict):
    """outbox.yaml: delivery of the outboxes (emails, payment requests, shipment messages)."""
    delivery: OutboxDelivery = OutboxDelivery()
    email: OutboxEmail = OutboxEmail()
    payments: OutboxPayments = OutboxPayments()
    shipment_messages: OutboxShipmentMessages = OutboxShipmentMessages()


@dataclass(frozen=True)
class Rules:
    """Every rules file, validated, with per-channel and per-method settings resolved against the defaults."""
    folder: Path
    channel_defaults: ChannelSettings
    channels: dict[str, ChannelSettings]
    payment_defaults: PaymentMethodSettings
    payment_methods: dict[str, PaymentMethodSettings]
    schedule: ScheduleFile
    priority: PriorityFile
    safety_stock: SafetyStockFile
    checks: ChecksFile = ChecksFile()
    outbox: OutboxFile = OutboxFile()

    def channel(self, store: str) -> ChannelSettings:
        """Settings of a channel; a channel that is not listed uses the defaults."""
        return self.channels.get(store, self.channel_defaults)

    def payment_method(self, method: str | None) -> PaymentMethodSettings:
        return self.payment_methods.get(method or "", self.payment_defaults)

    @property
    def sources(self) -> list[str]:
        """Every source code named by a channel, sorted."""
        return sorted({s for c in [self.channel_defaults, *self.channels.values()] for s in c.sources})


def _describe(err: dict) -> str:
    loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
    kind = err["type"]
    if kind == "extra_forbidden":
        return f"{loc}: unknown key"
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = "expected " + msg[len("Value error, "):]
    return f"{loc}: {msg}, got {err.get('input')!r}"


def _validate(model, data: Any, file: Path, prefix: str = ""):
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{prefix}{_describe(e)}" for e in exc.errors())
        raise RulesError(f"{file}: {problems}") from None


def _read_yaml(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise RulesError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise RulesError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def load_rules(folder: Path | str | None = None) -> Rules:
    """Read and validate every rules file of the folder (default: BACKORDERS_RULES_DIR or include/rules)."""
    folder = Path(folder) if folder is not None else rules_dir()
    if not folder.is_dir():
        raise RulesError(f"{folder}: rules folder not found (set BACKORDERS_RULES_DIR)")

    f = folder / "channels.yaml"
    cfile = _validate(ChannelsFile, _read_yaml(f), f)
    channel_defaults = _validate(ChannelSettings, cfile.defaults, f, "defaults.")
    channels = {
        name: _validate(ChannelSettings, {**cfile.defaults, **(over or {})}, f, f"channels.{name}.")
        for name, over in cfile.channels.items()
    }

    f = folder / "payment_methods.yaml"
    pfile = _validate(PaymentMethodsFile, _read_yaml(f), f)
    payment_defaults = _validate(PaymentMethodSettings, pfile.defaults, f, "defaults.")
    methods = {
        name: _validate(PaymentMethodSettings, {**pfile.defaults, **(over or {})}, f, f"methods.{name}.")
        for name, over in pfile.methods.items()
    }
    for name, m in [("defaults", payment_defaults), *methods.items()]:
        if m.reauthorize and m.reauth_interval_days > m.authorization_validity_days:
            warnings.warn(
                f"{f}: {name}: reauth_interval_days ({m.reauth_interval_days}) is longer than "
                f"authorization_validity_days ({m.authorization_validity_days}): authorizations will lapse "
                "before they are renewed",
                RulesWarning, stacklevel=2,
            )

    f = folder / "schedule.yaml"
    schedule = _validate(ScheduleFile, _read_yaml(f), f)
    f = folder / "priority.yaml"
    priority = _validate(PriorityFile, _read_yaml(f), f)
    f = folder / "safety_stock.yaml"
    safety = _validate(SafetyStockFile, _read_yaml(f), f)
    f = folder / "checks.yaml"
    checks = _validate(ChecksFile, _read_yaml(f), f)
    outbox = load_outbox(folder)
    return Rules(folder, channel_defaults, channels, payment_defaults, methods, schedule, priority, safety, checks,
                 outbox)


def cron_expressions(schedule: ScheduleFile) -> list[str]:
    """Cron expressions for the schedule's times, one per distinct minute-of-hour pattern."""
    by_minute: dict[int, list[int]] = {}
    for t in schedule.times:
        tt = time.fromisoformat(t)
        by_minute.setdefault(tt.minute, []).append(tt.hour)
    return [f"{m} {','.join(str(h) for h in sorted(hs))} * * *" for m, hs in sorted(by_minute.items())]


def load_outbox(folder: Path | str | None = None) -> OutboxFile:
    """Only outbox.yaml (the DAG reads it at parse time for the delivery tasks' retries)."""
    folder = Path(folder) if folder is not None else rules_dir()
    f = folder / "outbox.yaml"
    return _validate(OutboxFile, _read_yaml(f), f)


def load_schedule(folder: Path | str | None = None) -> ScheduleFile:
    """Only schedule.yaml (what the DAG file needs at parse time: cheap, no other file read)."""
    folder = Path(folder) if folder is not None else rules_dir()
    f = folder / "schedule.yaml"
    return _validate(ScheduleFile, _read_yaml(f), f)
