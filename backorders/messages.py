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
from dataclasses import dataclass
from json.decoder import scanstring as _scanstring
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

def _v_identifier(value: Any) -> str:
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
    if value is None:
        return None
    if not isinstance(value, str):
        raise _fail(f"expected a string or null, got {_render(value)}")
    problem = _char_problem(value)
    if problem:
        raise _fail(problem)
    return value


def _v_opt_reference(value: Any) -> str | None:
    if value is None:
        return None
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
    if value is None:
        return None
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
        return dup
    return result


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a valid JSON number")


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"number {text[:40]} is out of range")
    return number


def _loads(body: str) -> Any:
    return json.loads(
        body,
        object_pairs_hook=_pairs_hook,
        parse_constant=_no_constant,
        parse_float=_finite_float,
    )


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


def _raw_value_text(body: str, keys: tuple[str, ...]) -> str | None:
    """Exact text of the value at `keys` (object keys from the top) in valid JSON `body`."""
    decoder = json.JSONDecoder()
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
            _, pos = decoder.raw_decode(body, pos)
            pos = _WS.match(body, pos).end()
            if body[pos : pos + 1] != ",":
                return None
            pos = _WS.match(body, pos + 1).end()
    _, end = decoder.raw_decode(body, pos)
    return body[pos:end]


def canonical_order_json(order: dict) -> str:
    """Canonical JSON of params.order, the input of content_hash."""
    return json.dumps(order, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


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


def _customer_address(order: OrderIn) -> AddressIn | None:
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


def _cross_checks(order: OrderIn) -> tuple[list[str], dict]:
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
    return json.dumps(values, ensure_ascii=False, separators=(",", ":"))


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


def _build_order(order: OrderIn, extras: dict, raw_order: str, content_hash: str) -> ParsedOrder:
    customer = order.customer or CustomerIn()
    address = _customer_address(order)
    assert address is not None and address.email  # guaranteed by _cross_checks
    name = " ".join(part for part in (address.first_name, address.last_name) if part).strip() or None
    payment = order.payments[0] if order.payments else None
    transaction = payment.transactions[0] if payment is not None and payment.transactions else None
    gateway = transaction.gateway_information if transaction is not None else None
    currency = payment.currency if payment is not None else None
    payment_currency = {p.reference: p.currency for p in reversed(order.payments or []) if p.reference is not None}

    lines = []
    for line, (values, flag) in zip(order.lines, extras["lines"]):
        amount = line.amount or AmountIn()
        line_currency = payment_currency.get(line.payment_reference) if line.payment_reference else None
        lines.append(
            ParsedLine(
                order_id=order.id,
                line_id=line.id,
                line_number=line.line_number,
                sku=line.sku,
                product_name=line.product_name,
                product_type=line.product_type,
                qty=line.quantity,
                gross_amount=amount.gross_amount or 0.0,
                net_amount=amount.net_amount or 0.0,
                tax_amount=amount.tax_amount or 0.0,
                currency=line_currency or currency,
                promise_delivery_date=line.promise_delivery_date,
                allow_backorders=flag,
                line_attributes=_attributes_json(values),
            )
        )
    promises = [ln.promise_delivery_date for ln in lines if ln.promise_delivery_date is not None]
    return ParsedOrder(
        order_id=order.id,
        store=order.store,
        origin_date=order.origin_date,
        customer_id=customer.id,
        customer_type=customer.type,
        customer_segment=customer.segment,
        customer_email=address.email,
        customer_name=name,
        language=order.language,
        country_code=address.country_code,
        payment_method=transaction.payment_method if transaction else None,
        payment_reference=payment.reference if payment else None,
        currency=currency,
        authorized_amount=transaction.amount if transaction else None,
        authorization_status=gateway.authorization_status if gateway else None,
        gateway_id=gateway.gateway_id if gateway else None,
        transaction_id=gateway.transaction_id if gateway else None,
        shipping_method=extras["shipping_method"],
        promised_date=min(promises) if promises else None,
        content_hash=content_hash,
        order_attributes=_attributes_json(extras["order_attributes"]),
        raw_order=raw_order,
        lines=tuple(lines),
    )


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
        return Rejection(reason=f"message could not be parsed: internal error {type(error).__name__}: {error}"[:500])


def _parse(body: Any) -> ParsedOrder | Rejection:
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
    try:
        doc = _loads(body)
    except RecursionError:
        return _reject([f"invalid JSON: nested too deeply (more than {MAX_DEPTH} levels)"], None)
    except ValueError as error:  # includes json.JSONDecodeError
        return _reject([f"invalid JSON: {error}"], None)
    if not isinstance(doc, dict):
        return _reject([f"message: expected a JSON object, got {_render(doc)}"], None)
    too_deep, scan_problems = _scan_document(doc)
    if too_deep:
        return _reject([too_deep], None)

    problems, order_dict = _envelope_problems(doc)
    order_id = _readable_order_id(order_dict)
    order: OrderIn | None = None
    extras: dict = {}
    if order_dict is not None:
        try:
            order = OrderIn.model_validate(order_dict)
        except ValidationError as error:
            problems.extend(_model_problems(error))
        else:
            cross, extras = _cross_checks(order)
            problems.extend(cross)
    # whole-document findings not already reported for the same place
    for path, problem in scan_problems:
        if not any(p.startswith(path + ":") for p in problems):
            problems.append(problem)
    if problems or order is None:
        return _reject(problems or ["params.order: could not be read"], order_id)

    raw_order = _raw_value_text(body, ("params", "order"))
    if raw_order is None:  # pragma: no cover - the body is valid JSON with params.order
        raw_order = json.dumps(order_dict, ensure_ascii=False)
    content_hash = hashlib.sha256(canonical_order_json(order_dict).encode("utf-8")).hexdigest()
    return _build_order(order, extras, raw_order, content_hash)


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

    orders: dict[str, list] = {c: [] for c in ORDER_COLUMNS}
    lines: dict[str, list] = {c: [] for c in LINE_COLUMNS}
    reject_rows: list[int] = []
    reject_reasons: list[str] = []
    reject_order_ids: list[str | None] = []

    for position, (message_id, body) in enumerate(zip(message_ids, bodies)):
        result = parse_order_message(body)
        if isinstance(result, Rejection):
            reject_rows.append(position)
            reject_reasons.append(result.reason)
            reject_order_ids.append(result.order_id)
            continue
        row = result.model_dump(exclude={"lines"})
        row["message_id"] = message_id
        for column in ORDER_COLUMNS:
            orders[column].append(row[column])
        for line in result.lines:
            line_row = line.model_dump()
            line_row["message_id"] = message_id
            for column in LINE_COLUMNS:
                lines[column].append(line_row[column])

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
