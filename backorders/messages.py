"""Parse and validate raw `magento.sales.order_management.create` order messages into orders and lines, or precise rejections."""

# Every message either parses into a ParsedOrder (with its lines) or is
# rejected with a human reason that names the place of the problem, e.g.
#
#     params.order.lines[1].quantity: expected a whole number greater than 0, got -2
#
# Nothing here raises on bad input and nothing is dropped silently.
#
# Decisions (see also docs of each constant / validator below):
#
# * Size: a body larger than MAX_BODY_BYTES (UTF-8 bytes) is rejected without
#   being parsed.
# * JSON: strict JSON only. NaN/Infinity, numbers out of float range, duplicate
#   keys (anywhere in the message), nesting deeper than MAX_DEPTH, and strings
#   or keys holding a NUL character or an unpaired surrogate (anywhere: they
#   cannot be stored in PostgreSQL text/jsonb) are rejected.
# * Envelope: `jsonrpc` must be "2.0", `method` must be
#   `magento.sales.order_management.create`, `params.order` an object. The
#   JSON-RPC `id` is not checked.
# * Identifiers (order id, store, line id, sku): non-empty strings, no control
#   characters, no leading or trailing white space (" 0001" and "0001" would
#   otherwise be two different orders). Store codes are not checked against a
#   list here.
# * Every text field read (names, emails, references, codes...) must be a string
#   (or null when optional) without control characters (Unicode Cc, U+2028,
#   U+2029, unpaired surrogates). Free text that is only kept in raw_order may
#   contain tabs/new lines, but no NUL.
# * origin_date: ISO 8601 date-time WITH a time zone offset ("Z" or +hh:mm);
#   without one it is rejected. promise_delivery_date: the same, or a plain
#   date "YYYY-MM-DD" (read as 00:00 UTC). Dates must lie in the years
#   1900..2199. Both are converted to UTC.
# * quantity: a whole number from 1 to 2147483647. A JSON number written with a
#   zero fraction (2.0, 2e0) is accepted as 2, because several serializers emit
#   integral numbers that way; 1.5, 0, negatives, booleans and strings are
#   rejected. line_number: a whole number from 0 to 2147483647 (same rule for
#   x.0), unique within the order. Line ids unique within the order.
# * Amounts (line amount.*, transaction amount): finite numbers (not booleans,
#   not strings) when present; absent or null line amounts count as 0.
# * Customer email: required (the backorder notices are e-mailed). It is the
#   email of the first address with address_type "customer" (any case) that
#   has one, else of the first address with an email. An email that is null or
#   "" counts as absent; any other email must look like name@domain.tld.
#   customer_name ("first last") and country_code come from that same address.
# * Payments are optional (payment columns None and authorized_amount NaN when
#   absent). The order's payment is the first payment and its first
#   transaction; authorized_amount is that transaction's amount. Currencies,
#   when given, must be 3 upper-case letters. A line's currency is the currency
#   of the payment it references, else the order currency.
# * Address and payment references must be unique; a line's
#   shipping_address_reference / payment_reference, when given (not null), must
#   name an existing one; "" is not a reference.
# * Custom attributes: lists of {name, value}; name a non-empty string; value
#   any JSON (kept as is). The same name twice with different values is
#   rejected (with the same value it is harmless). allowBackorders /
#   allowBackorder: the string "true" or "false", any case, nothing else; both
#   spellings with different values are rejected. shipping_method (order
#   level): a string or null.
# * Several problems: up to MAX_PROBLEMS are reported joined by "; " in a fixed
#   order (envelope, then fields in document order, then cross-field checks,
#   then whole-document checks), followed by "; and N more problem(s)" if any.
# * content_hash: sha256 hex of
#   json.dumps(params.order, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
#   encoded as UTF-8 (numbers as Python reprs them: 64.80 and 64.8 hash alike).
# * raw_order: the exact text of params.order as it appears in the body
#   (white space, key order, number spelling and unknown fields untouched).

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import re
import threading
import types
import typing
from dataclasses import dataclass
from json.decoder import scanstring as _scanstring
from types import SimpleNamespace
from typing import Annotated, Any, Callable

import pandas as pd
from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError
from pydantic_core import PydanticCustomError

__all__ = [
    "JSONRPC_VERSION",
    "METHOD",
    "MAX_BODY_BYTES",
    "MAX_DEPTH",
    "MAX_PROBLEMS",
    "ORDER_COLUMNS",
    "LINE_COLUMNS",
    "REJECT_COLUMNS",
    "ParsedLine",
    "ParsedOrder",
    "Rejection",
    "ParsedBatch",
    "parse_order_message",
    "parse_messages",
    "canonical_order_json",
]

JSONRPC_VERSION = "2.0"
METHOD = "magento.sales.order_management.create"
MAX_BODY_BYTES = 1_048_576
MAX_DEPTH = 100
MAX_PROBLEMS = 3
MAX_INT = 2_147_483_647  # PostgreSQL integer
MIN_YEAR, MAX_YEAR = 1900, 2199
BACKORDER_ATTRIBUTES = ("allowBackorders", "allowBackorder")
SHIPPING_METHOD_ATTRIBUTE = "shipping_method"

ORDER_COLUMNS = (
    "message_id", "order_id", "store", "origin_date", "customer_id", "customer_type",
    "customer_segment", "customer_email", "customer_name", "language", "country_code",
    "payment_method", "payment_reference", "currency", "authorized_amount",
    "authorization_status", "gateway_id", "transaction_id", "shipping_method",
    "promised_date", "content_hash", "order_attributes", "raw_order",
)
LINE_COLUMNS = (
    "message_id", "order_id", "line_id", "line_number", "sku", "product_name",
    "product_type", "qty", "gross_amount", "net_amount", "tax_amount", "currency",
    "promise_delivery_date", "allow_backorders", "line_attributes",
)
REJECT_COLUMNS = ("message_id", "received_at", "reason", "raw", "order_id")

_UTC = _dt.timezone.utc
_DATETIME_DTYPE = "datetime64[ns, UTC]"


# --------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------

def _render(value: Any, limit: int = 60) -> str:
    """Short, printable rendering of a JSON value for a reason text."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    try:
        text = json.dumps(value, ensure_ascii=True)
    except (TypeError, ValueError):  # pragma: no cover - JSON values only
        text = repr(value)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text


def _key_path(base: str, key: Any) -> str:
    if isinstance(key, int):
        return f"{base}[{key}]"
    if isinstance(key, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
        return f"{base}.{key}" if base else key
    return f"{base}[{json.dumps(str(key), ensure_ascii=True)}]"


def _loc_path(base: str, loc: tuple) -> str:
    path = base
    for part in loc:
        path = _key_path(path, part)
    return path


_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def _char_problem(text: str, pattern: re.Pattern = _CONTROL) -> str | None:
    if text.isprintable():  # both patterns match only characters that are not printable (Cc, Zl, Zp, Cs)
        return None
    match = pattern.search(text)
    if match is None:
        return None
    ch = match.group()
    where = f"at character {match.start() + 1}"
    if "\ud800" <= ch <= "\udfff":
        return f"contains an unpaired surrogate (U+{ord(ch):04X}) {where}, which is not valid Unicode"
    if ch == "\x00":
        return f"contains a NUL character (U+0000) {where}, which cannot be stored"
    return f"contains a control character (U+{ord(ch):04X}) {where}"


def _fail(message: str) -> PydanticCustomError:
    # The message goes through the context so that braces in it are harmless.
    return PydanticCustomError("order_message", "{reason}", {"reason": message})


# --------------------------------------------------------------------------
# field validators (used as pydantic BeforeValidators)
# --------------------------------------------------------------------------

# Fast paths: a printable str (str.isprintable) has no control character and no white space but " ", so the
# common case is decided by one C call; anything else goes through the full checks, which word the problem.

def _v_identifier(value: Any) -> str:
    if type(value) is str and value.isprintable() and value and value[0] != " " and value[-1] != " ":
        return value
    if not isinstance(value, str) or value == "":
        raise _fail(f"expected a non-empty string, got {_render(value)}")
    problem = _char_problem(value)
    if problem:
        raise _fail(problem)
    if value.strip() == "":
        raise _fail(f"expected a non-empty string, got {_render(value)}")
    if value.strip() != value:
        raise _fail(f"expected no leading or trailing white space, got {_render(value)}")
    return value


def _v_name(value: Any) -> str:
    """Non-empty text without control characters (inner spaces allowed)."""
    if not isinstance(value, str):
        raise _fail(f"expected a non-empty string, got {_render(value)}")
    problem = _char_problem(value)
    if problem:
        raise _fail(problem)
    if value.strip() == "":
        raise _fail(f"expected a non-empty string, got {_render(value)}")
    return value


def _v_opt_text(value: Any) -> str | None:
    if value is None or (type(value) is str and value.isprintable()):
        return value
    if not isinstance(value, str):
        raise _fail(f"expected a string or null, got {_render(value)}")
    problem = _char_problem(value)
    if problem:
        raise _fail(problem)
    return value


def _v_opt_reference(value: Any) -> str | None:
    if value is None or (type(value) is str and value and value.isprintable()):
        return value
    if not isinstance(value, str) or value == "":
        raise _fail(f"expected a non-empty string or null, got {_render(value)}")
    problem = _char_problem(value)
    if problem:
        raise _fail(problem)
    return value


_EMAIL = re.compile(r"[^@\s]+@[^@\s.]+(\.[^@\s.]+)+")


def _v_opt_email(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise _fail(f"expected an email address (a string) or null, got {_render(value)}")
    problem = _char_problem(value)
    if problem:
        raise _fail(problem)
    if len(value) > 254 or not _EMAIL.fullmatch(value):
        raise _fail(f"expected an email address like name@example.com, got {_render(value)}")
    return value


_CURRENCY = re.compile(r"[A-Z]{3}")


def _v_opt_currency(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _CURRENCY.fullmatch(value):
        raise _fail(f'expected a 3-letter ISO 4217 currency code such as "EUR", got {_render(value)}')
    return value


def _v_opt_number(value: Any) -> float | None:
    if value is None or (type(value) is float and math.isfinite(value)):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(f"expected a number, got {_render(value)}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise _fail(f"expected a finite number, got {_render(value)}")
    return number


def _whole_number(value: Any) -> int | None:
    """The int a JSON number stands for if it is whole (2 or 2.0), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return None


def _v_quantity(value: Any) -> int:
    number = _whole_number(value)
    if number is None or number < 1:
        raise _fail(f"expected a whole number greater than 0, got {_render(value)}")
    if number > MAX_INT:
        raise _fail(f"expected a whole number greater than 0 and at most {MAX_INT}, got {_render(value)}")
    return number


def _v_line_number(value: Any) -> int:
    number = _whole_number(value)
    if number is None or not 0 <= number <= MAX_INT:
        raise _fail(f"expected a whole number from 0 to {MAX_INT}, got {_render(value)}")
    return number


_DATE_ONLY = re.compile(r"\d{4}-\d{2}-\d{2}")
_DATETIME_EXPECTED = 'expected an ISO 8601 date-time with a time zone offset, such as "2026-03-02T09:14:05+01:00"'


def _to_utc(value: str, parsed: _dt.datetime) -> _dt.datetime:
    try:
        utc = parsed.astimezone(_UTC)
    except (OverflowError, ValueError):
        utc = None
    if utc is None or not MIN_YEAR <= utc.year <= MAX_YEAR:
        raise _fail(f"date-time outside the supported years {MIN_YEAR} to {MAX_YEAR}, got {_render(value)}")
    return utc


def _parse_datetime(value: Any, *, date_only_ok: bool) -> _dt.datetime:
    expected = _DATETIME_EXPECTED + (' (or a date "YYYY-MM-DD")' if date_only_ok else "")
    if not isinstance(value, str):
        raise _fail(f"{expected}, got {_render(value)}")
    if _DATE_ONLY.fullmatch(value):
        try:
            day = _dt.date.fromisoformat(value)
        except ValueError:
            raise _fail(f"{expected}, got {_render(value)}, which is not a valid date") from None
        if not date_only_ok:
            raise _fail(f"{expected}, got {_render(value)}, a date without time and time zone")
        return _to_utc(value, _dt.datetime(day.year, day.month, day.day, tzinfo=_UTC))
    try:
        parsed = _dt.datetime.fromisoformat(value)
    except (ValueError, TypeError):
        raise _fail(f"{expected}, got {_render(value)}") from None
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise _fail(f"{expected}, got {_render(value)}, which has no time zone offset")
    return _to_utc(value, parsed)


def _v_origin_date(value: Any) -> _dt.datetime:
    return _parse_datetime(value, date_only_ok=False)


def _v_opt_promise_date(value: Any) -> _dt.datetime | None:
    if value is None:
        return None
    return _parse_datetime(value, date_only_ok=True)


def _v_opt_object(value: Any) -> Any:
    if value is not None and not isinstance(value, dict):
        raise _fail(f"expected an object or null, got {_render(value)}")
    return value


def _v_opt_list(value: Any) -> Any:
    if value is not None and not isinstance(value, list):
        raise _fail(f"expected an array or null, got {_render(value)}")
    return value


def _v_nonempty_list(value: Any) -> Any:
    if not isinstance(value, list) or not value:
        raise _fail(f"expected a non-empty array, got {_render(value) if value != [] else 'an empty array'}")
    return value


def _v_object(value: Any) -> Any:
    if not isinstance(value, dict):
        raise _fail(f"expected an object, got {_render(value)}")
    return value


Identifier = Annotated[str, BeforeValidator(_v_identifier)]
Name = Annotated[str, BeforeValidator(_v_name)]
OptText = Annotated[str | None, BeforeValidator(_v_opt_text)]
OptReference = Annotated[str | None, BeforeValidator(_v_opt_reference)]
OptEmail = Annotated[str | None, BeforeValidator(_v_opt_email)]
OptCurrency = Annotated[str | None, BeforeValidator(_v_opt_currency)]
OptNumber = Annotated[float | None, BeforeValidator(_v_opt_number)]
Quantity = Annotated[int, BeforeValidator(_v_quantity)]
LineNumber = Annotated[int, BeforeValidator(_v_line_number)]
OriginDate = Annotated[_dt.datetime, BeforeValidator(_v_origin_date)]
OptPromiseDate = Annotated[_dt.datetime | None, BeforeValidator(_v_opt_promise_date)]


# --------------------------------------------------------------------------
# input models (what is read from params.order; unknown fields are ignored
# here and kept verbatim in raw_order)
# --------------------------------------------------------------------------

class _In(BaseModel):
    model_config = ConfigDict(extra="ignore")


class CustomAttributeIn(_In):
    name: Name
    value: Any = None


AttributeList = Annotated[list[CustomAttributeIn] | None, BeforeValidator(_v_opt_list)]


class CustomerIn(_In):
    id: OptText = None
    type: OptText = None
    segment: OptText = None


class AddressIn(_In):
    reference: OptReference = None
    address_type: OptText = None
    first_name: OptText = None
    last_name: OptText = None
    country_code: OptText = None
    email: OptEmail = None


class GatewayIn(_In):
    gateway_id: OptText = None
    authorization_status: OptText = None
    transaction_id: OptText = None


class TransactionIn(_In):
    payment_method: OptText = None
    amount: OptNumber = None
    gateway_information: Annotated[GatewayIn | None, BeforeValidator(_v_opt_object)] = None


TransactionList = Annotated[list[TransactionIn] | None, BeforeValidator(_v_opt_list)]


class PaymentIn(_In):
    reference: OptReference = None
    currency: OptCurrency = None
    transactions: TransactionList = None


class AmountIn(_In):
    gross_amount: OptNumber = None
    net_amount: OptNumber = None
    tax_amount: OptNumber = None


class LineIn(_In):
    id: Identifier
    line_number: LineNumber
    sku: Identifier
    quantity: Quantity
    product_type: OptText = None
    product_name: OptText = None
    shipping_address_reference: OptReference = None
    payment_reference: OptReference = None
    amount: Annotated[AmountIn | None, BeforeValidator(_v_opt_object)] = None
    promise_delivery_date: OptPromiseDate = None
    custom_attributes: AttributeList = None


class OrderIn(_In):
    id: Identifier
    store: Identifier
    origin_date: OriginDate
    language: OptText = None
    customer: Annotated[CustomerIn | None, BeforeValidator(_v_opt_object)] = None
    addresses: Annotated[list[AddressIn] | None, BeforeValidator(_v_opt_list)] = None
    payments: Annotated[list[PaymentIn] | None, BeforeValidator(_v_opt_list)] = None
    lines: Annotated[list[LineIn], BeforeValidator(_v_nonempty_list)]
    custom_attributes: AttributeList = None


_NO_CUSTOMER = CustomerIn()  # an order without customer
_NO_AMOUNT = AmountIn()  # a line without amount


# --------------------------------------------------------------------------
# the same reading without pydantic, for the common case
# --------------------------------------------------------------------------
# OrderIn.model_validate spends most of its time going back and forth between pydantic-core and the Python
# validators above. _read_order reads the same fields with the same validators in plain Python, following the
# models' own field definitions, and builds the same values as SimpleNamespaces with the models' fields (everything
# downstream only reads attributes). It gives up (None) at the first problem of any kind: the message then goes
# through OrderIn.model_validate, which words every problem. It is only used on documents in which _scan_document
# finds nothing (see _check).

class _GiveUp(Exception):
    """The fast reading does not handle this input: let pydantic read it."""


_Reader = Callable[[Any], Any]
_Fields = tuple[tuple[tuple[str, _Reader], ...], tuple[tuple[str, _Reader], ...]]  # (required, optional) (name, reader)


def _read_fields(value: Any, fields: _Fields) -> SimpleNamespace:
    """A model read from a dict as pydantic does, given its (required, optional) fields as (name, reader) pairs.

    Unknown keys are ignored; a missing required field raises KeyError. Every optional field of the input models
    defaults to None, and their readers map None to None: absent and null are read alike, without a call.
    """
    if not isinstance(value, dict):
        raise _GiveUp
    required, optional = fields
    get = value.get
    read = {name: reader(value[name]) for name, reader in required}
    for name, reader in optional:
        item = get(name)
        read[name] = None if item is None else reader(item)
    return SimpleNamespace(**read)


def _field_reader(info: Any) -> _Reader:
    """The reader of one model field: its BeforeValidator, then the nested model(s) it holds, if any."""
    validators = [m.func for m in info.metadata if isinstance(m, BeforeValidator)]
    validate = validators[0] if validators else (lambda value: value)
    annotation = info.annotation
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    kinds = [k for k in (typing.get_args(annotation) if union else (annotation,)) if k is not type(None)]
    kind = kinds[0] if len(kinds) == 1 else Any
    if typing.get_origin(kind) is list:
        (item,) = typing.get_args(kind)
        fields = _model_fields(item)

        def read_list(value: Any) -> Any:
            value = validate(value)
            return None if value is None else [_read_fields(v, fields) for v in value]

        return read_list
    if isinstance(kind, type) and issubclass(kind, BaseModel):
        fields = _model_fields(kind)

        def read_model(value: Any) -> Any:
            value = validate(value)
            return None if value is None else _read_fields(value, fields)

        return read_model
    if kind not in (str, int, float, _dt.datetime, Any):  # pragma: no cover - a new kind of field: teach it here
        raise TypeError(f"_field_reader: no fast reading for {info.annotation}")
    return validate


def _model_fields(model: type[BaseModel]) -> _Fields:
    required, optional = [], []
    for name, info in model.model_fields.items():
        reader = _field_reader(info)
        if info.is_required():
            required.append((name, reader))
        elif info.default is None and reader(None) is None:
            optional.append((name, reader))
        else:  # pragma: no cover - see _read_fields
            raise TypeError(f"_model_fields: {model.__name__}.{name} is optional but not None by default")
    return tuple(required), tuple(optional)


_ORDER_FIELDS = _model_fields(OrderIn)


def _read_order(order: dict) -> SimpleNamespace | None:
    """params.order read as OrderIn.model_validate would (as attributes), or None if anything is wrong with it."""
    try:
        return _read_fields(order, _ORDER_FIELDS)
    except Exception:  # noqa: BLE001 - _GiveUp, a validator's PydanticCustomError, anything: pydantic decides
        return None


# --------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------

class _Out(BaseModel):
    model_config = ConfigDict(frozen=True)


class ParsedLine(_Out):
    order_id: str
    line_id: str
    line_number: int
    sku: str
    product_name: str | None
    product_type: str | None
    qty: int
    gross_amount: float
    net_amount: float
    tax_amount: float
    currency: str | None
    promise_delivery_date: _dt.datetime | None  # UTC
    allow_backorders: bool | None  # None: the line does not say
    line_attributes: str  # JSON text {name: value}


class ParsedOrder(_Out):
    order_id: str
    store: str
    origin_date: _dt.datetime  # UTC
    customer_id: str | None
    customer_type: str | None
    customer_segment: str | None
    customer_email: str
    customer_name: str | None
    language: str | None
    country_code: str | None
    payment_method: str | None
    payment_reference: str | None
    currency: str | None
    authorized_amount: float | None
    authorization_status: str | None
    gateway_id: str | None
    transaction_id: str | None
    shipping_method: str | None
    promised_date: _dt.datetime | None  # UTC, earliest line promise_delivery_date
    content_hash: str
    order_attributes: str  # JSON text {name: value}
    raw_order: str  # params.order exactly as received
    lines: tuple[ParsedLine, ...]


class Rejection(_Out):
    reason: str  # up to MAX_PROBLEMS problems joined by "; "
    order_id: str | None = None  # params.order.id when it is a valid identifier
    problems: tuple[str, ...] = ()  # every problem found, in reporting order


@dataclass
class ParsedBatch:
    orders: pd.DataFrame  # ORDER_COLUMNS, one row per accepted message
    lines: pd.DataFrame  # LINE_COLUMNS
    rejects: pd.DataFrame  # REJECT_COLUMNS, one row per rejected message


# --------------------------------------------------------------------------
# JSON reading
# --------------------------------------------------------------------------

class _DupDict(dict):
    """A JSON object that had repeated keys (the last value won)."""

    duplicates: list[str]


_DECODING = threading.local()  # .duplicates: the list that _loads collects the objects with repeated keys in


def _pairs_hook(pairs: list[tuple[str, Any]]) -> dict:
    result = dict(pairs)
    if len(result) != len(pairs):
        dup = _DupDict(result)
        seen: set[str] = set()
        dup.duplicates = []
        for key, _ in pairs:
            if key in seen and key not in dup.duplicates:
                dup.duplicates.append(key)
            seen.add(key)
        found = getattr(_DECODING, "duplicates", None)
        if found is not None:
            found.append(dup)
        return dup
    return result


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a valid JSON number")


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"number {text[:40]} is out of range")
    return number


# what json.loads(body, object_pairs_hook=..., parse_constant=..., parse_float=...) would build on every call
_STRICT_DECODER = json.JSONDecoder(
    object_pairs_hook=_pairs_hook, parse_constant=_no_constant, parse_float=_finite_float
)


def _loads(body: str, found_duplicates: list | None = None) -> Any:
    """Strict JSON, as json.loads: objects with repeated keys are _DupDicts, also appended to found_duplicates."""
    if body.startswith("\ufeff"):  # as json.loads does
        raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", body, 0)
    _DECODING.duplicates = found_duplicates
    try:
        return _STRICT_DECODER.decode(body)
    finally:
        _DECODING.duplicates = None


# A \u escape of a NUL or of a surrogate in a body. Paired escapes of surrogates ("\ud83d\ude00") and an escaped
# backslash before "u0000" also match; they only send the message through the full scan, which decides.
_UNSTORABLE_ESCAPE = re.compile(r"\\u(?:0000|[dD][89abAB])")


def _nothing_to_scan(body: str, found_duplicates: list) -> bool:
    """True when _scan_document(_loads(body)) certainly finds nothing, so that it can be skipped:

    * no repeated key was seen while decoding;
    * the body has too few brackets to nest deeper than MAX_DEPTH (every level is one "{" or "[" of the text);
    * no string can hold a NUL or an unpaired surrogate: the text has no \\u escape of one, and no surrogate itself
      (a literal NUL is not valid JSON). A str without surrogates encodes to UTF-8; isascii() is the quick way.
    Otherwise the full scan decides.
    """
    if found_duplicates or body.count("{") + body.count("[") > MAX_DEPTH:
        return False
    if "\\u" in body and _UNSTORABLE_ESCAPE.search(body) is not None:
        return False
    if not body.isascii():
        try:
            body.encode("utf-8")
        except UnicodeEncodeError:
            return False
    return True


def _scan_document(doc: Any) -> tuple[str | None, list[tuple[str, str]]]:
    """Walk the whole document without recursion.

    Returns (too-deep problem or None, [(path, problem)]) for duplicate keys and
    strings/keys that cannot be stored (NUL, unpaired surrogates).
    """
    problems: list[tuple[str, str]] = []
    stack: list[tuple[Any, str, int]] = [(doc, "", 0)]
    while stack:
        node, path, depth = stack.pop()
        if depth > MAX_DEPTH:
            return f"{path or 'message'}: nested more than {MAX_DEPTH} levels deep", problems
        if isinstance(node, dict):
            where = path or "message"
            for key in getattr(node, "duplicates", ()):
                problems.append((where, f"{where}: duplicate key {_render(key)}"))
            children = []
            for key, value in node.items():
                child = _key_path(path, key)
                problem = _char_problem(key, _UNSTORABLE)
                if problem:
                    problems.append((child, f"{child}: key {problem}"))
                children.append((value, child, depth + 1))
            stack.extend(reversed(children))
        elif isinstance(node, list):
            stack.extend(reversed([(v, _key_path(path, i), depth + 1) for i, v in enumerate(node)]))
        elif isinstance(node, str):
            problem = _char_problem(node, _UNSTORABLE)
            if problem:
                problems.append((path, f"{path or 'message'}: {problem}"))
    return None, problems


_WS = re.compile(r"[ \t\n\r]*")


_DECODER = json.JSONDecoder()
_JSON_WS = " \t\n\r"


# The usual start of a message up to the value of params.order: {"jsonrpc": "...", "id": ..., "method": "...",
# "params": {"order": (JSON white space allowed; the id a string, an integer or null). In valid JSON a string token is
# exactly "(?:[^"\\]|\\.)*", so a match ends where the value of params.order starts.
_STRING = r'"(?:[^"\\]|\\.)*"'
_USUAL_START = re.compile(
    r'[ \t\n\r]*\{[ \t\n\r]*"jsonrpc"[ \t\n\r]*:[ \t\n\r]*' + _STRING
    + r'[ \t\n\r]*,[ \t\n\r]*"id"[ \t\n\r]*:[ \t\n\r]*(?:' + _STRING + r'|-?[0-9]+|null)'
    + r'[ \t\n\r]*,[ \t\n\r]*"method"[ \t\n\r]*:[ \t\n\r]*' + _STRING
    + r'[ \t\n\r]*,[ \t\n\r]*"params"[ \t\n\r]*:[ \t\n\r]*\{[ \t\n\r]*"order"[ \t\n\r]*:[ \t\n\r]*'
)


def _raw_order_text(body: str, doc: dict) -> str | None:
    """Exact text of params.order in valid JSON `body` that decoded to `doc` (without repeated keys).

    When params holds only "order" and is the last key of the message, the value ends right before the two closing
    braces at the end of the body (JSON white space aside): no need to decode it again to find its end. Its start is
    found by one regular expression when the message starts as usual, else key by key.
    """
    if len(doc["params"]) == 1 and next(reversed(doc)) == "params":
        usual = _USUAL_START.match(body)
        start = usual.end() if usual is not None else _value_start(body, ("params", "order"))
        if start is not None:
            end = body.rstrip(_JSON_WS)
            if end.endswith("}"):
                end = end[:-1].rstrip(_JSON_WS)
                if end.endswith("}"):
                    end = end[:-1].rstrip(_JSON_WS)
                    if end.endswith("}") and len(end) > start:
                        return body[start : len(end)]
    return _raw_value_text(body, ("params", "order"))


def _value_start(body: str, keys: tuple[str, ...]) -> int | None:
    """Position where the value at `keys` (object keys from the top) starts in valid JSON `body`."""
    decoder = _DECODER
    pos = _WS.match(body, 0).end()
    for wanted in keys:
        if body[pos : pos + 1] != "{":
            return None
        pos = _WS.match(body, pos + 1).end()
        while True:
            if body[pos : pos + 1] != '"':
                return None
            key, pos = _scanstring(body, pos + 1)
            pos = _WS.match(body, pos).end()
            if body[pos : pos + 1] != ":":
                return None
            pos = _WS.match(body, pos + 1).end()
            if key == wanted:
                break
            if body[pos : pos + 1] == '"':  # a string value (as jsonrpc, id and method are): skip it in C
                _, pos = _scanstring(body, pos + 1)
            else:
                _, pos = decoder.raw_decode(body, pos)
            pos = _WS.match(body, pos).end()
            if body[pos : pos + 1] != ",":
                return None
            pos = _WS.match(body, pos + 1).end()
    return pos


def _raw_value_text(body: str, keys: tuple[str, ...]) -> str | None:
    """Exact text of the value at `keys` (object keys from the top) in valid JSON `body`."""
    pos = _value_start(body, keys)
    if pos is None:
        return None
    _, end = _DECODER.raw_decode(body, pos)
    return body[pos:end]


# json.dumps(value, **options) builds a JSONEncoder(**options) per call; these are the same encoders, built once
_CANONICAL_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
_ATTRIBUTES_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def canonical_order_json(order: dict) -> str:
    """Canonical JSON of params.order, the input of content_hash."""
    return _CANONICAL_ENCODER.encode(order)


# --------------------------------------------------------------------------
# checks across fields
# --------------------------------------------------------------------------

_BASE = "params.order"


def _attribute_map(
    attributes: list[CustomAttributeIn] | None, path: str, problems: list[str]
) -> tuple[dict[str, Any], dict[str, int]]:
    """{name: value} and {name: first index}; duplicate names with other values are problems."""
    values: dict[str, Any] = {}
    index: dict[str, int] = {}
    for k, attribute in enumerate(attributes or ()):
        if attribute.name in values:
            if values[attribute.name] != attribute.value or type(values[attribute.name]) is not type(attribute.value):
                problems.append(
                    f"{path}[{k}].name: duplicate attribute {_render(attribute.name)} with a different value "
                    f"than {path}[{index[attribute.name]}]"
                )
            continue
        values[attribute.name] = attribute.value
        index[attribute.name] = k
    return values, index


def _backorder_flag(values: dict[str, Any], index: dict[str, int], path: str, problems: list[str]) -> bool | None:
    flags: dict[str, bool] = {}
    for name in BACKORDER_ATTRIBUTES:
        if name not in values:
            continue
        value = values[name]
        if isinstance(value, str) and value.lower() in ("true", "false"):
            flags[name] = value.lower() == "true"
        else:
            problems.append(
                f'{path}[{index[name]}].value: expected "true" or "false" (a string, any case) for {name}, '
                f"got {_render(value)}"
            )
    if len(set(flags.values())) > 1:
        first, second = BACKORDER_ATTRIBUTES
        problems.append(
            f"{path}[{index[second]}]: {second} {_render(values[second])} contradicts "
            f"{first} {_render(values[first])} at {path}[{index[first]}]"
        )
        return None
    return next(iter(flags.values()), None)


def _customer_address(order: OrderIn | SimpleNamespace) -> AddressIn | SimpleNamespace | None:
    with_email = [a for a in (order.addresses or ()) if a.email]
    for address in with_email:
        if (address.address_type or "").lower() == "customer":
            return address
    return with_email[0] if with_email else None


def _duplicates(items: list, key: Callable[[Any], Any], path: str, field: str, what: str, problems: list[str]) -> None:
    first: dict[Any, int] = {}
    for i, item in enumerate(items):
        value = key(item)
        if value is None:
            continue
        if value in first:
            problems.append(f"{path}[{i}].{field}: duplicate {what} {_render(value)} (already used by {path}[{first[value]}])")
        else:
            first[value] = i


def _cross_checks(order: OrderIn | SimpleNamespace) -> tuple[list[str], dict]:
    problems: list[str] = []
    addresses = order.addresses or []
    payments = order.payments or []
    _duplicates(addresses, lambda a: a.reference, f"{_BASE}.addresses", "reference", "address reference", problems)
    if order.addresses is None:
        problems.append(f"{_BASE}.addresses: required field is missing (a customer email address is needed for backorder notices)")
    elif _customer_address(order) is None:
        problems.append(f"{_BASE}.addresses: no address has an email (a customer email address is needed for backorder notices)")
    _duplicates(payments, lambda p: p.reference, f"{_BASE}.payments", "reference", "payment reference", problems)
    _duplicates(order.lines, lambda ln: ln.id, f"{_BASE}.lines", "id", "line id", problems)
    _duplicates(order.lines, lambda ln: ln.line_number, f"{_BASE}.lines", "line_number", "line number", problems)

    address_refs = {a.reference for a in addresses if a.reference is not None}
    payment_refs = {p.reference for p in payments if p.reference is not None}
    line_extras: list[tuple[dict, bool | None]] = []
    for i, line in enumerate(order.lines):
        path = f"{_BASE}.lines[{i}]"
        if line.shipping_address_reference is not None and line.shipping_address_reference not in address_refs:
            problems.append(
                f"{path}.shipping_address_reference: {_render(line.shipping_address_reference)} "
                f"matches no reference in {_BASE}.addresses"
            )
        if line.payment_reference is not None and line.payment_reference not in payment_refs:
            problems.append(
                f"{path}.payment_reference: {_render(line.payment_reference)} matches no reference in {_BASE}.payments"
            )
        values, index = _attribute_map(line.custom_attributes, f"{path}.custom_attributes", problems)
        flag = _backorder_flag(values, index, f"{path}.custom_attributes", problems)
        line_extras.append((values, flag))

    order_values, order_index = _attribute_map(order.custom_attributes, f"{_BASE}.custom_attributes", problems)
    shipping_method = order_values.get(SHIPPING_METHOD_ATTRIBUTE)
    if shipping_method is not None:
        problem = (
            f"expected a string or null, got {_render(shipping_method)}"
            if not isinstance(shipping_method, str)
            else _char_problem(shipping_method)
        )
        if problem:
            problems.append(
                f"{_BASE}.custom_attributes[{order_index[SHIPPING_METHOD_ATTRIBUTE]}].value: {problem}"
            )
    return problems, {"lines": line_extras, "order_attributes": order_values, "shipping_method": shipping_method}


# --------------------------------------------------------------------------
# the parser
# --------------------------------------------------------------------------

def _attributes_json(values: dict[str, Any]) -> str:
    if not values:
        return "{}"
    return _ATTRIBUTES_ENCODER.encode(values)


def _reject(problems: list[str], order_id: str | None) -> Rejection:
    shown = problems[:MAX_PROBLEMS]
    reason = "; ".join(shown)
    if len(problems) > MAX_PROBLEMS:
        more = len(problems) - MAX_PROBLEMS
        reason += f"; and {more} more problem{'s' if more > 1 else ''}"
    return Rejection(reason=reason, order_id=order_id, problems=tuple(problems))


def _readable_order_id(order: Any) -> str | None:
    if isinstance(order, dict):
        try:
            return _v_identifier(order.get("id"))
        except PydanticCustomError:
            return None
    return None


def _envelope_problems(doc: dict) -> tuple[list[str], Any]:
    problems: list[str] = []
    if "jsonrpc" not in doc:
        problems.append(f'jsonrpc: required field is missing (expected "{JSONRPC_VERSION}")')
    elif doc["jsonrpc"] != JSONRPC_VERSION or not isinstance(doc["jsonrpc"], str):
        problems.append(f'jsonrpc: expected "{JSONRPC_VERSION}", got {_render(doc["jsonrpc"])}')
    if "method" not in doc:
        problems.append(f'method: required field is missing (expected "{METHOD}")')
    elif doc["method"] != METHOD or not isinstance(doc["method"], str):
        problems.append(f'method: expected "{METHOD}", got {_render(doc["method"])}')
    order = None
    if "params" not in doc:
        problems.append("params: required field is missing")
    elif not isinstance(doc["params"], dict):
        problems.append(f"params: expected an object, got {_render(doc['params'])}")
    elif "order" not in doc["params"]:
        problems.append("params.order: required field is missing")
    elif not isinstance(doc["params"]["order"], dict):
        problems.append(f"params.order: expected an object, got {_render(doc['params']['order'])}")
    else:
        order = doc["params"]["order"]
    return problems, order


def _model_problems(error: ValidationError) -> list[str]:
    problems = []
    for detail in error.errors(include_url=False):
        path = _loc_path(_BASE, tuple(detail["loc"]))
        if detail["type"] == "missing":
            problems.append(f"{path}: required field is missing")
        elif detail["type"] == "order_message":
            problems.append(f"{path}: {detail['ctx']['reason']}")
        elif detail["type"] in ("model_type", "model_attributes_type", "dict_type"):
            problems.append(f"{path}: expected an object, got {_render(detail['input'])}")
        else:  # pragma: no cover - every field has its own validator
            problems.append(f"{path}: {detail['msg']}")
    return problems


def _order_fields(
    order: OrderIn | SimpleNamespace, extras: dict, raw_order: str, content_hash: str
) -> tuple[dict, list[dict]]:
    """The fields of the ParsedOrder (without lines) and of its ParsedLines, as plain dicts."""
    customer = order.customer or _NO_CUSTOMER
    address = _customer_address(order)
    assert address is not None and address.email  # guaranteed by _cross_checks
    name = " ".join(part for part in (address.first_name, address.last_name) if part).strip() or None
    payment = order.payments[0] if order.payments else None
    transaction = payment.transactions[0] if payment is not None and payment.transactions else None
    gateway = transaction.gateway_information if transaction is not None else None
    currency = payment.currency if payment is not None else None
    payment_currency = {p.reference: p.currency for p in reversed(order.payments or []) if p.reference is not None}

    lines = []
    promised = None
    for line, (values, flag) in zip(order.lines, extras["lines"]):
        amount = line.amount or _NO_AMOUNT
        line_currency = payment_currency.get(line.payment_reference) if line.payment_reference else None
        promise = line.promise_delivery_date
        if promise is not None and (promised is None or promise < promised):
            promised = promise
        lines.append({
            "order_id": order.id,
            "line_id": line.id,
            "line_number": line.line_number,
            "sku": line.sku,
            "product_name": line.product_name,
            "product_type": line.product_type,
            "qty": line.quantity,
            "gross_amount": amount.gross_amount or 0.0,
            "net_amount": amount.net_amount or 0.0,
            "tax_amount": amount.tax_amount or 0.0,
            "currency": line_currency or currency,
            "promise_delivery_date": promise,
            "allow_backorders": flag,
            "line_attributes": _attributes_json(values),
        })
    fields = {
        "order_id": order.id,
        "store": order.store,
        "origin_date": order.origin_date,
        "customer_id": customer.id,
        "customer_type": customer.type,
        "customer_segment": customer.segment,
        "customer_email": address.email,
        "customer_name": name,
        "language": order.language,
        "country_code": address.country_code,
        "payment_method": transaction.payment_method if transaction else None,
        "payment_reference": payment.reference if payment else None,
        "currency": currency,
        "authorized_amount": transaction.amount if transaction else None,
        "authorization_status": gateway.authorization_status if gateway else None,
        "gateway_id": gateway.gateway_id if gateway else None,
        "transaction_id": gateway.transaction_id if gateway else None,
        "shipping_method": extras["shipping_method"],
        "promised_date": promised,  # the earliest line promise_delivery_date
        "content_hash": content_hash,
        "order_attributes": _attributes_json(extras["order_attributes"]),
        "raw_order": raw_order,
    }
    return fields, lines


def _build_order(order: OrderIn | SimpleNamespace, extras: dict, raw_order: str, content_hash: str) -> ParsedOrder:
    fields, lines = _order_fields(order, extras, raw_order, content_hash)
    return ParsedOrder(**fields, lines=tuple(ParsedLine(**line) for line in lines))


def _body_size(body: str) -> int:
    """Size of the body in UTF-8 bytes."""
    if len(body) * 4 <= MAX_BODY_BYTES:  # cannot be over the limit: skip the encoding
        return len(body)
    return len(body.encode("utf-8", "surrogatepass"))


def _is_missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def parse_order_message(body: str) -> ParsedOrder | Rejection:
    """Parse one raw message body. Never raises on bad input: returns a Rejection instead."""
    try:
        return _parse(body)
    except Exception as error:  # noqa: BLE001 - last resort: never raise, never lose the message
        return _internal_error(error)


def _internal_error(error: Exception) -> Rejection:
    return Rejection(reason=f"message could not be parsed: internal error {type(error).__name__}: {error}"[:500])


def _parse(body: Any) -> ParsedOrder | Rejection:
    checked = _check(body)
    if isinstance(checked, Rejection):
        return checked
    return _build_order(*checked)


def _parse_fields(body: Any) -> tuple[dict, list[dict]] | Rejection:
    """parse_order_message as the fields of the ParsedOrder and of its lines (what parse_messages needs)."""
    try:
        checked = _check(body)
        if isinstance(checked, Rejection):
            return checked
        return _order_fields(*checked)
    except Exception as error:  # noqa: BLE001 - as in parse_order_message
        return _internal_error(error)


def _check(body: Any) -> tuple[OrderIn | SimpleNamespace, dict, str, str] | Rejection:
    """A Rejection, or what a ParsedOrder is built from: the order read, its cross-check extras, raw text and hash."""
    if isinstance(body, (bytes, bytearray, memoryview)):
        raw = bytes(body)
        if len(raw) > MAX_BODY_BYTES:
            return _reject([f"message too large: {len(raw)} bytes, limit {MAX_BODY_BYTES}"], None)
        try:
            body = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            return _reject([f"message is not valid UTF-8: {error}"], None)
    if _is_missing(body):
        return _reject(["message body is missing (null)"], None)
    if not isinstance(body, str):
        return _reject([f"message body is not text but {type(body).__name__}"], None)
    size = _body_size(body)
    if size > MAX_BODY_BYTES:
        return _reject([f"message too large: {size} bytes, limit {MAX_BODY_BYTES}"], None)
    if body.strip() == "":
        return _reject(["invalid JSON: the message is empty"], None)
    found_duplicates: list = []
    try:
        doc = _loads(body, found_duplicates)
    except RecursionError:
        return _reject([f"invalid JSON: nested too deeply (more than {MAX_DEPTH} levels)"], None)
    except ValueError as error:  # includes json.JSONDecodeError
        return _reject([f"invalid JSON: {error}"], None)
    if not isinstance(doc, dict):
        return _reject([f"message: expected a JSON object, got {_render(doc)}"], None)
    clean = _nothing_to_scan(body, found_duplicates)
    if clean:
        scan_problems: list[tuple[str, str]] = []
    else:
        too_deep, scan_problems = _scan_document(doc)
        if too_deep:
            return _reject([too_deep], None)

    problems, order_dict = _envelope_problems(doc)
    order_id = _readable_order_id(order_dict)
    order: OrderIn | SimpleNamespace | None = None
    extras: dict = {}
    if order_dict is not None:
        order = _read_order(order_dict) if clean else None
        if order is None:
            try:
                order = OrderIn.model_validate(order_dict)
            except ValidationError as error:
                problems.extend(_model_problems(error))
        if order is not None:
            cross, extras = _cross_checks(order)
            problems.extend(cross)
    # whole-document findings not already reported for the same place
    for path, problem in scan_problems:
        if not any(p.startswith(path + ":") for p in problems):
            problems.append(problem)
    if problems or order is None:
        return _reject(problems or ["params.order: could not be read"], order_id)

    raw_order = _raw_order_text(body, doc)
    if raw_order is None:  # pragma: no cover - the body is valid JSON with params.order
        raw_order = json.dumps(order_dict, ensure_ascii=False)
    content_hash = hashlib.sha256(canonical_order_json(order_dict).encode("utf-8")).hexdigest()
    return order, extras, raw_order, content_hash


# --------------------------------------------------------------------------
# batches
# --------------------------------------------------------------------------

_ORDER_DTYPES = {
    "message_id": "int64",
    "origin_date": _DATETIME_DTYPE,
    "authorized_amount": "float64",
    "promised_date": _DATETIME_DTYPE,
}
_LINE_DTYPES = {
    "message_id": "int64",
    "line_number": "int64",
    "qty": "int64",
    "gross_amount": "float64",
    "net_amount": "float64",
    "tax_amount": "float64",
    "promise_delivery_date": _DATETIME_DTYPE,
    "allow_backorders": "boolean",
}


def _frame(columns: tuple[str, ...], data: dict[str, list], dtypes: dict[str, str]) -> pd.DataFrame:
    series = {}
    for column in columns:
        values = data[column]
        dtype = dtypes.get(column, object)
        if dtype == "float64":
            values = [math.nan if v is None else v for v in values]
        series[column] = pd.Series(values, dtype=dtype)
    return pd.DataFrame(series, columns=list(columns))


def parse_messages(messages: pd.DataFrame) -> ParsedBatch:
    """Parse landing.order_messages rows (message_id, received_at, body) in message_id order.

    Every input row ends up either in `orders` (with its `lines`) or in `rejects`.
    Raises only if the frame itself lacks a required column.
    """
    missing = [c for c in ("message_id", "received_at", "body") if c not in messages.columns]
    if missing:
        raise ValueError(f"parse_messages: missing column(s) {', '.join(missing)}")
    ordered = messages.sort_values("message_id", kind="mergesort")
    message_ids = [int(v) for v in ordered["message_id"].tolist()]
    bodies = ordered["body"].tolist()

    reject_rows: list[int] = []
    reject_reasons: list[str] = []
    reject_order_ids: list[str | None] = []
    order_rows: list[dict] = []  # the fields of each order (dicts by column name) ...
    order_message_ids: list[int] = []
    line_rows: list[dict] = []  # ... and of each line; made into columns at the end
    line_message_ids: list[int] = []

    for position, (message_id, body) in enumerate(zip(message_ids, bodies)):
        result = _parse_fields(body)
        if isinstance(result, Rejection):
            reject_rows.append(position)
            reject_reasons.append(result.reason)
            reject_order_ids.append(result.order_id)
            continue
        fields, order_lines = result
        order_rows.append(fields)
        order_message_ids.append(message_id)
        line_rows.extend(order_lines)
        line_message_ids.extend([message_id] * len(order_lines))
    orders = {c: [row[c] for row in order_rows] for c in ORDER_COLUMNS if c != "message_id"}
    orders["message_id"] = order_message_ids
    lines = {c: [row[c] for row in line_rows] for c in LINE_COLUMNS if c != "message_id"}
    lines["message_id"] = line_message_ids

    received = pd.to_datetime(ordered["received_at"], utc=True).dt.as_unit("ns")
    raw = [None if _is_missing(bodies[i]) else bodies[i] for i in reject_rows]
    rejects = pd.DataFrame(
        {
            "message_id": pd.Series([message_ids[i] for i in reject_rows], dtype="int64"),
            "received_at": received.iloc[reject_rows].reset_index(drop=True).astype(_DATETIME_DTYPE),
            "reason": pd.Series(reject_reasons, dtype=object),
            "raw": pd.Series(raw, dtype=object),
            "order_id": pd.Series(reject_order_ids, dtype=object),
        },
        columns=list(REJECT_COLUMNS),
    )
    return ParsedBatch(
        orders=_frame(ORDER_COLUMNS, orders, _ORDER_DTYPES),
        lines=_frame(LINE_COLUMNS, lines, _LINE_DTYPES),
        rejects=rejects,
    )
