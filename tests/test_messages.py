"""Tests of backorders.messages: parsing and validation of raw order messages."""

from __future__ import annotations

import copy
import hashlib
import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from backorders import messages as M
from backorders.messages import (
    LINE_COLUMNS,
    MAX_BODY_BYTES,
    ORDER_COLUMNS,
    REJECT_COLUMNS,
    ParsedBatch,
    ParsedOrder,
    Rejection,
    parse_messages,
    parse_order_message,
)

FIXTURES = Path(__file__).parent / "fixtures" / "messages"
US_TEXT = (FIXTURES / "order-create-backorder-line.json").read_text(encoding="utf-8")
EU_TEXT = (FIXTURES / "order-create-no-backorder.json").read_text(encoding="utf-8")
US = json.loads(US_TEXT)
EU = json.loads(EU_TEXT)


def body(message: dict) -> str:
    return json.dumps(message)


def mutated(change: Callable[[dict], Any], base: dict = US) -> str:
    message = copy.deepcopy(base)
    change(message)
    return body(message)


def order_of(message: dict) -> dict:
    return message["params"]["order"]


def line(message: dict, i: int) -> dict:
    return order_of(message)["lines"][i]


def frame(bodies: list[Any], start: int = 1) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "message_id": pd.Series(range(start, start + len(bodies)), dtype="int64"),
            "received_at": pd.Series(
                pd.date_range("2026-03-02T08:00:00Z", periods=len(bodies), freq="min"), dtype="datetime64[ns, UTC]"
            ),
            "body": pd.Series(bodies, dtype=object),
        }
    )


def rejected(text: Any) -> Rejection:
    result = parse_order_message(text)
    assert isinstance(result, Rejection), f"expected a rejection, got {result!r}"
    assert result.reason and result.reason == result.reason.strip()
    return result


def accepted(text: str) -> ParsedOrder:
    result = parse_order_message(text)
    assert isinstance(result, ParsedOrder), f"expected an order, got {result!r}"
    return result


# --------------------------------------------------------------------------
# the samples
# --------------------------------------------------------------------------


def test_us_sample_parses_with_its_values():
    order = accepted(US_TEXT)
    assert order.order_id == "000100231"
    assert order.store == "US_WEB"
    assert order.origin_date == pd.Timestamp("2026-03-02T09:14:05Z")
    assert order.customer_id == "C-88213"
    assert (order.customer_type, order.customer_segment) == ("REGISTERED", "B2C")
    assert order.customer_email == "dana.reyes@example.com"
    assert order.customer_name == "Dana Reyes"
    assert order.language == "en_US"
    assert order.country_code == "US"
    assert order.payment_method == "CREDIT_CARD"
    assert order.payment_reference == "PAY-1"
    assert order.currency == "USD"
    assert order.authorized_amount == pytest.approx(219.97)
    assert order.authorization_status == "AUTHORIZED"
    assert order.gateway_id == "ADYEN"
    assert order.transaction_id == "8815731205443213"
    assert order.shipping_method == "STANDARD"
    assert order.promised_date is None
    assert json.loads(order.order_attributes) == {"shipping_method": "STANDARD"}
    assert [ln.line_id for ln in order.lines] == ["000100231-1", "000100231-2"]
    assert [ln.sku for ln in order.lines] == ["TENT-2P-GRN", "STAKE-AL-8"]
    assert [ln.qty for ln in order.lines] == [1, 2]
    assert [ln.allow_backorders for ln in order.lines] == [True, None]
    assert order.lines[1].net_amount == pytest.approx(64.80)
    assert order.lines[0].gross_amount == pytest.approx(149.99)
    assert order.lines[0].tax_amount == pytest.approx(11.11)
    assert [ln.currency for ln in order.lines] == ["USD", "USD"]
    assert json.loads(order.lines[0].line_attributes) == {"allowBackorders": "true"}
    assert json.loads(order.lines[1].line_attributes) == {}


def test_eu_sample_parses_with_its_values_and_utc_conversion():
    order = accepted(EU_TEXT)
    assert order.order_id == "EU-0004471"
    assert order.store == "EU_WEB"
    # "2026-03-02T11:40:00+01:00" is 10:40Z
    assert order.origin_date == pd.Timestamp("2026-03-02T10:40:00Z")
    assert order.origin_date.utcoffset().total_seconds() == 0
    assert order.customer_email == "jonas.becker@example.org"
    assert order.customer_name == "Jonas Becker"
    assert order.payment_method == "PAYPAL"
    assert order.currency == "EUR"
    assert order.shipping_method is None
    assert len(order.lines) == 1
    assert order.lines[0].qty == 3
    assert order.lines[0].allow_backorders is False


def test_batch_of_samples_frames_columns_dtypes_and_values():
    batch = parse_messages(frame([US_TEXT, EU_TEXT, "not json"]))
    assert isinstance(batch, ParsedBatch)
    assert tuple(batch.orders.columns) == ORDER_COLUMNS
    assert tuple(batch.lines.columns) == LINE_COLUMNS
    assert tuple(batch.rejects.columns) == REJECT_COLUMNS
    o, ln, r = batch.orders, batch.lines, batch.rejects
    assert str(o["origin_date"].dtype) == "datetime64[ns, UTC]"
    assert str(o["promised_date"].dtype) == "datetime64[ns, UTC]"
    assert o["authorized_amount"].dtype == "float64"
    assert o["message_id"].dtype == "int64"
    assert str(ln["promise_delivery_date"].dtype) == "datetime64[ns, UTC]"
    assert str(ln["allow_backorders"].dtype) == "boolean"
    assert ln["qty"].dtype == "int64" and ln["line_number"].dtype == "int64"
    assert str(r["received_at"].dtype) == "datetime64[ns, UTC]"

    assert o["order_id"].tolist() == ["000100231", "EU-0004471"]
    assert o["message_id"].tolist() == [1, 2]
    assert o["store"].tolist() == ["US_WEB", "EU_WEB"]
    assert o["origin_date"].tolist() == [pd.Timestamp("2026-03-02T09:14:05Z"), pd.Timestamp("2026-03-02T10:40:00Z")]
    assert o["customer_email"].tolist() == ["dana.reyes@example.com", "jonas.becker@example.org"]
    assert o["shipping_method"].tolist() == ["STANDARD", None]
    assert o["promised_date"].isna().all()
    assert ln["message_id"].tolist() == [1, 1, 2]
    assert ln["qty"].tolist() == [1, 2, 3]
    flags = ln["allow_backorders"]
    assert flags.iloc[0] is True or flags.iloc[0] == True  # noqa: E712
    assert flags.isna().tolist() == [False, True, False]
    assert bool(flags.iloc[2]) is False
    assert ln["gross_amount"].tolist() == pytest.approx([149.99, 69.98, 54.0])

    assert r["message_id"].tolist() == [3]
    assert r["raw"].tolist() == ["not json"]
    assert r["order_id"].tolist() == [None]
    assert r["received_at"].tolist() == [pd.Timestamp("2026-03-02T08:02:00Z")]
    assert r["reason"].iloc[0].startswith("invalid JSON")


def test_batch_processes_in_message_id_order():
    messages = frame([EU_TEXT, US_TEXT]).assign(message_id=[20, 10])
    batch = parse_messages(messages)
    assert batch.orders["message_id"].tolist() == [10, 20]
    assert batch.orders["order_id"].tolist() == ["000100231", "EU-0004471"]
    assert batch.lines["message_id"].tolist() == [10, 10, 20]


def test_empty_batch_has_typed_empty_frames():
    batch = parse_messages(frame([]))
    assert batch.orders.empty and batch.lines.empty and batch.rejects.empty
    assert tuple(batch.orders.columns) == ORDER_COLUMNS
    assert str(batch.orders["origin_date"].dtype) == "datetime64[ns, UTC]"
    assert str(batch.lines["allow_backorders"].dtype) == "boolean"
    assert str(batch.rejects["received_at"].dtype) == "datetime64[ns, UTC]"


def test_batch_without_required_column_is_a_caller_error():
    with pytest.raises(ValueError, match="body"):
        parse_messages(frame([US_TEXT]).drop(columns=["body"]))


# --------------------------------------------------------------------------
# raw_order, content_hash, extras
# --------------------------------------------------------------------------


def test_raw_order_is_params_order_exactly_as_received():
    order = accepted(US_TEXT)
    start = US_TEXT.index('{\n      "id": "000100231"')
    assert US_TEXT[start:].startswith(order.raw_order)
    assert '"net_amount": 64.80' in order.raw_order  # number spelling kept
    assert json.loads(order.raw_order) == order_of(US)


def test_unknown_fields_are_accepted_and_kept():
    def add(m):
        order_of(m)["loyalty"] = {"tier": "gold", "points": [1, 2.50]}
        line(m, 0)["warranty"] = None
        order_of(m)["addresses"][0]["geo"] = {"lat": 45.5}
        m["meta"] = {"trace": "x"}

    text = mutated(add)
    order = accepted(text)
    raw = json.loads(order.raw_order)
    assert raw["loyalty"] == {"tier": "gold", "points": [1, 2.5]}
    assert raw["lines"][0]["warranty"] is None
    assert raw["addresses"][0]["geo"] == {"lat": 45.5}
    assert "trace" not in order.raw_order  # only params.order


def test_content_hash_is_sha256_of_canonical_order_json():
    order = accepted(US_TEXT)
    canonical = json.dumps(order_of(US), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert order.content_hash == hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def test_content_hash_same_for_same_order_differently_written_and_envelope():
    compact = json.dumps({**US, "id": "another-rpc-id"}, separators=(",", ":"))
    reordered = json.dumps(json.loads(US_TEXT), sort_keys=True, indent=4)
    hashes = {accepted(t).content_hash for t in (US_TEXT, compact, reordered)}
    assert len(hashes) == 1


def test_content_hash_differs_when_content_differs():
    changed = mutated(lambda m: line(m, 1).update(quantity=3))
    assert accepted(changed).content_hash != accepted(US_TEXT).content_hash
    assert accepted(changed).order_id == accepted(US_TEXT).order_id


# --------------------------------------------------------------------------
# accepted variants (decisions)
# --------------------------------------------------------------------------


def test_quantity_written_as_whole_float_is_accepted():
    order = accepted(mutated(lambda m: line(m, 1).update(quantity=2.0)))
    assert order.lines[1].qty == 2 and isinstance(order.lines[1].qty, int)


def test_allow_backorder_spelling_and_case_insensitive_values():
    def change(m):
        line(m, 0)["custom_attributes"] = [{"name": "allowBackorder", "value": "FALSE"}]
        line(m, 1)["custom_attributes"] = [{"name": "allowBackorders", "value": "True"}]

    order = accepted(mutated(change))
    assert [ln.allow_backorders for ln in order.lines] == [False, True]


def test_both_spellings_agreeing_is_fine():
    order = accepted(mutated(lambda m: line(m, 0)["custom_attributes"].append({"name": "allowBackorder", "value": "TRUE"})))
    assert order.lines[0].allow_backorders is True


def test_promise_dates_converted_to_utc_and_earliest_is_promised_date():
    def change(m):
        line(m, 0)["promise_delivery_date"] = "2026-03-20T18:00:00-07:00"
        line(m, 1)["promise_delivery_date"] = "2026-03-21"

    order = accepted(mutated(change))
    assert order.lines[0].promise_delivery_date == pd.Timestamp("2026-03-21T01:00:00Z")
    assert order.lines[1].promise_delivery_date == pd.Timestamp("2026-03-21T00:00:00Z")
    assert order.promised_date == pd.Timestamp("2026-03-21T00:00:00Z")
    batch = parse_messages(frame([mutated(change)]))
    assert batch.orders["promised_date"].iloc[0] == pd.Timestamp("2026-03-21T00:00:00Z")
    assert batch.lines["promise_delivery_date"].tolist() == [
        pd.Timestamp("2026-03-21T01:00:00Z"),
        pd.Timestamp("2026-03-21T00:00:00Z"),
    ]


def test_zulu_origin_date_accepted():
    order = accepted(mutated(lambda m: order_of(m).update(origin_date="2026-03-02T09:14:05.250Z")))
    assert order.origin_date == pd.Timestamp("2026-03-02T09:14:05.250Z")


def test_payments_are_optional():
    def change(m):
        del order_of(m)["payments"]
        for ln in order_of(m)["lines"]:
            del ln["payment_reference"]

    order = accepted(mutated(change))
    assert order.payment_method is None and order.payment_reference is None and order.currency is None
    assert order.authorized_amount is None
    assert [ln.currency for ln in order.lines] == [None, None]
    batch = parse_messages(frame([mutated(change)]))
    assert math.isnan(batch.orders["authorized_amount"].iloc[0])
    assert batch.orders["payment_method"].iloc[0] is None


def test_missing_amounts_are_zero():
    def change(m):
        del line(m, 0)["amount"]
        line(m, 1)["amount"] = {"gross_amount": 10}

    order = accepted(mutated(change))
    assert (order.lines[0].gross_amount, order.lines[0].net_amount, order.lines[0].tax_amount) == (0, 0, 0)
    assert (order.lines[1].gross_amount, order.lines[1].net_amount, order.lines[1].tax_amount) == (10.0, 0, 0)


def test_customer_address_preferred_over_first_address_with_email():
    def change(m):
        first = {"reference": "SHIP", "address_type": "shipping", "email": "ship@example.com", "country_code": "CA"}
        order_of(m)["addresses"].insert(0, first)

    order = accepted(mutated(change))
    assert order.customer_email == "dana.reyes@example.com" and order.country_code == "US"


def test_first_address_with_email_when_no_customer_address_has_one():
    def change(m):
        order_of(m)["addresses"][0]["email"] = None
        order_of(m)["addresses"].append({"reference": "B", "address_type": "billing", "email": "b@example.com"})

    assert accepted(mutated(change)).customer_email == "b@example.com"


def test_line_currency_from_referenced_payment():
    def change(m):
        order_of(m)["payments"].append({"reference": "PAY-2", "currency": "CAD"})
        line(m, 1)["payment_reference"] = "PAY-2"

    order = accepted(mutated(change))
    assert [ln.currency for ln in order.lines] == ["USD", "CAD"]


def test_shipping_method_absent_is_none_and_order_attributes_kept():
    order = accepted(mutated(lambda m: order_of(m).update(custom_attributes=[{"name": "gift", "value": {"wrap": True}}])))
    assert order.shipping_method is None
    assert json.loads(order.order_attributes) == {"gift": {"wrap": True}}


def test_bytes_body_is_accepted_as_utf8():
    assert accepted(US_TEXT.encode("utf-8")).order_id == "000100231"


# --------------------------------------------------------------------------
# rejections: one per kind, the reason names the place
# --------------------------------------------------------------------------

def _set(path: list, value: Any) -> Callable[[dict], None]:
    def change(m):
        node = m
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return change


def _delete(path: list) -> Callable[[dict], None]:
    def change(m):
        node = m
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]

    return change


O = ["params", "order"]
L0 = O + ["lines", 0]
L1 = O + ["lines", 1]

REJECTIONS = [
    # (test id, message change, expected text in the reason)
    ("jsonrpc-wrong", _set(["jsonrpc"], "1.0"), 'jsonrpc: expected "2.0", got "1.0"'),
    ("jsonrpc-number", _set(["jsonrpc"], 2.0), 'jsonrpc: expected "2.0", got 2.0'),
    ("jsonrpc-missing", _delete(["jsonrpc"]), "jsonrpc: required field is missing"),
    ("method-wrong", _set(["method"], "magento.sales.order_management.cancel"),
     'method: expected "magento.sales.order_management.create", got "magento.sales.order_management.cancel"'),
    ("method-missing", _delete(["method"]), "method: required field is missing"),
    ("params-missing", _delete(["params"]), "params: required field is missing"),
    ("params-not-object", _set(["params"], [1]), "params: expected an object, got an array"),
    ("order-missing", _delete(O), "params.order: required field is missing"),
    ("order-not-object", _set(O, "x"), 'params.order: expected an object, got "x"'),
    ("order-id-missing", _delete(O + ["id"]), "params.order.id: required field is missing"),
    ("order-id-empty", _set(O + ["id"], ""), 'params.order.id: expected a non-empty string, got ""'),
    ("order-id-number", _set(O + ["id"], 100231), "params.order.id: expected a non-empty string, got 100231"),
    ("order-id-blank", _set(O + ["id"], "   "), 'params.order.id: expected a non-empty string, got "   "'),
    ("order-id-padded", _set(O + ["id"], " 000100231"), "params.order.id: expected no leading or trailing white space"),
    ("order-id-control", _set(O + ["id"], "0001\x07"), "params.order.id: contains a control character (U+0007)"),
    ("store-missing", _delete(O + ["store"]), "params.order.store: required field is missing"),
    ("store-empty", _set(O + ["store"], ""), "params.order.store: expected a non-empty string"),
    ("store-null", _set(O + ["store"], None), "params.order.store: expected a non-empty string, got null"),
    ("store-control", _set(O + ["store"], "US\nWEB"), "params.order.store: contains a control character (U+000A)"),
    ("origin-date-missing", _delete(O + ["origin_date"]), "params.order.origin_date: required field is missing"),
    ("origin-date-no-zone", _set(O + ["origin_date"], "2026-03-02T09:14:05"),
     "params.order.origin_date: expected an ISO 8601 date-time with a time zone offset"),
    ("origin-date-date-only", _set(O + ["origin_date"], "2026-03-02"),
     "params.order.origin_date: expected an ISO 8601 date-time with a time zone offset"),
    ("origin-date-garbage", _set(O + ["origin_date"], "yesterday"), 'got "yesterday"'),
    ("origin-date-number", _set(O + ["origin_date"], 1772442845), "params.order.origin_date: expected an ISO 8601"),
    ("origin-date-out-of-range", _set(O + ["origin_date"], "9999-01-01T00:00:00+00:00"),
     "params.order.origin_date: date-time outside the supported years"),
    ("lines-missing", _delete(O + ["lines"]), "params.order.lines: required field is missing"),
    ("lines-empty", _set(O + ["lines"], []), "params.order.lines: expected a non-empty array, got an empty array"),
    ("lines-not-list", _set(O + ["lines"], {"a": 1}), "params.order.lines: expected a non-empty array, got an object"),
    ("line-not-object", _set(L1, 7), "params.order.lines[1]: expected an object, got 7"),
    ("line-id-missing", _delete(L1 + ["id"]), "params.order.lines[1].id: required field is missing"),
    ("line-id-number", _set(L1 + ["id"], 2), "params.order.lines[1].id: expected a non-empty string, got 2"),
    ("line-id-duplicate", _set(L1 + ["id"], "000100231-1"),
     'params.order.lines[1].id: duplicate line id "000100231-1" (already used by params.order.lines[0])'),
    ("line-number-missing", _delete(L1 + ["line_number"]), "params.order.lines[1].line_number: required field is missing"),
    ("line-number-string", _set(L1 + ["line_number"], "2"), 'params.order.lines[1].line_number: expected a whole number'),
    ("line-number-duplicate", _set(L1 + ["line_number"], 1),
     "params.order.lines[1].line_number: duplicate line number 1 (already used by params.order.lines[0])"),
    ("sku-missing", _delete(L0 + ["sku"]), "params.order.lines[0].sku: required field is missing"),
    ("sku-empty", _set(L0 + ["sku"], ""), 'params.order.lines[0].sku: expected a non-empty string, got ""'),
    ("sku-control", _set(L0 + ["sku"], "TENT\x00"), "params.order.lines[0].sku: contains a NUL character"),
    ("quantity-missing", _delete(L1 + ["quantity"]), "params.order.lines[1].quantity: required field is missing"),
    ("quantity-zero", _set(L1 + ["quantity"], 0), "params.order.lines[1].quantity: expected a whole number greater than 0, got 0"),
    ("quantity-fraction", _set(L1 + ["quantity"], 1.5), "params.order.lines[1].quantity: expected a whole number greater than 0, got 1.5"),
    ("quantity-bool", _set(L1 + ["quantity"], True), "params.order.lines[1].quantity: expected a whole number greater than 0, got true"),
    ("quantity-string", _set(L1 + ["quantity"], "2"), 'params.order.lines[1].quantity: expected a whole number greater than 0, got "2"'),
    ("quantity-null", _set(L1 + ["quantity"], None), "params.order.lines[1].quantity: expected a whole number greater than 0, got null"),
    ("quantity-huge", _set(L1 + ["quantity"], 10**12), "params.order.lines[1].quantity: expected a whole number greater than 0 and at most 2147483647"),
    ("shipping-ref-unknown", _set(L1 + ["shipping_address_reference"], "ADDR-9"),
     'params.order.lines[1].shipping_address_reference: "ADDR-9" matches no reference in params.order.addresses'),
    ("payment-ref-unknown", _set(L0 + ["payment_reference"], "PAY-9"),
     'params.order.lines[0].payment_reference: "PAY-9" matches no reference in params.order.payments'),
    ("payment-ref-empty", _set(L0 + ["payment_reference"], ""), "params.order.lines[0].payment_reference: expected a non-empty string or null"),
    ("address-ref-duplicate", lambda m: order_of(m)["addresses"].append(dict(order_of(m)["addresses"][0])),
     'params.order.addresses[1].reference: duplicate address reference "ADDR-1"'),
    ("payment-ref-duplicate", lambda m: order_of(m)["payments"].append({"reference": "PAY-1"}),
     'params.order.payments[1].reference: duplicate payment reference "PAY-1"'),
    ("addresses-missing", _delete(O + ["addresses"]), "params.order.addresses: required field is missing (a customer email"),
    ("no-email", _delete(O + ["addresses", 0, "email"]), "params.order.addresses: no address has an email"),
    ("email-malformed", _set(O + ["addresses", 0, "email"], "dana.reyes.example.com"),
     'params.order.addresses[0].email: expected an email address like name@example.com, got "dana.reyes.example.com"'),
    ("email-control", _set(O + ["addresses", 0, "email"], "dana\t@example.com"), "params.order.addresses[0].email: contains a control character (U+0009)"),
    ("name-control", _set(O + ["addresses", 0, "first_name"], "Da\x1bna"), "params.order.addresses[0].first_name: contains a control character (U+001B)"),
    ("product-name-control", _set(L0 + ["product_name"], "tent\u2028green"), "params.order.lines[0].product_name: contains a control character (U+2028)"),
    ("customer-not-object", _set(O + ["customer"], "C-1"), 'params.order.customer: expected an object or null, got "C-1"'),
    ("customer-id-number", _set(O + ["customer", "id"], 88213), "params.order.customer.id: expected a string or null, got 88213"),
    ("amount-string", _set(L0 + ["amount", "gross_amount"], "149.99"), 'params.order.lines[0].amount.gross_amount: expected a number, got "149.99"'),
    ("amount-bool", _set(L0 + ["amount", "tax_amount"], False), "params.order.lines[0].amount.tax_amount: expected a number, got false"),
    ("amount-not-object", _set(L0 + ["amount"], 149.99), "params.order.lines[0].amount: expected an object or null, got 149.99"),
    ("transaction-amount-string", _set(O + ["payments", 0, "transactions", 0, "amount"], "219.97"),
     'params.order.payments[0].transactions[0].amount: expected a number, got "219.97"'),
    ("currency-bad", _set(O + ["payments", 0, "currency"], "usd"), 'params.order.payments[0].currency: expected a 3-letter ISO 4217 currency code such as "EUR", got "usd"'),
    ("promise-date-no-zone", _set(L0 + ["promise_delivery_date"], "2026-03-20T10:00:00"),
     "params.order.lines[0].promise_delivery_date: expected an ISO 8601 date-time with a time zone offset"),
    ("promise-date-invalid-day", _set(L0 + ["promise_delivery_date"], "2026-02-30"),
     'params.order.lines[0].promise_delivery_date: expected an ISO 8601 date-time with a time zone offset, such as "2026-03-02T09:14:05+01:00" (or a date "YYYY-MM-DD"), got "2026-02-30", which is not a valid date'),
    ("allow-backorders-word", _set(L0 + ["custom_attributes", 0, "value"], "yes"),
     'params.order.lines[0].custom_attributes[0].value: expected "true" or "false" (a string, any case) for allowBackorders, got "yes"'),
    ("allow-backorders-bool", _set(L0 + ["custom_attributes", 0, "value"], True),
     "params.order.lines[0].custom_attributes[0].value: expected \"true\" or \"false\" (a string, any case) for allowBackorders, got true"),
    ("allow-backorder-spelling-bad", _set(L0 + ["custom_attributes"], [{"name": "allowBackorder", "value": "1"}]),
     'params.order.lines[0].custom_attributes[0].value: expected "true" or "false" (a string, any case) for allowBackorder, got "1"'),
    ("allow-backorders-conflict", lambda m: line(m, 0)["custom_attributes"].append({"name": "allowBackorder", "value": "false"}),
     'params.order.lines[0].custom_attributes[1]: allowBackorder "false" contradicts allowBackorders "true"'),
    ("attribute-duplicate", lambda m: line(m, 0)["custom_attributes"].append({"name": "allowBackorders", "value": "false"}),
     'params.order.lines[0].custom_attributes[1].name: duplicate attribute "allowBackorders" with a different value'),
    ("attribute-no-name", _set(L0 + ["custom_attributes"], [{"value": "x"}]), "params.order.lines[0].custom_attributes[0].name: required field is missing"),
    ("attributes-not-list", _set(O + ["custom_attributes"], {"shipping_method": "STANDARD"}),
     "params.order.custom_attributes: expected an array or null, got an object"),
    ("shipping-method-not-string", _set(O + ["custom_attributes", 0, "value"], 3),
     "params.order.custom_attributes[0].value: expected a string or null, got 3"),
    ("nul-in-unknown-field", _set(O + ["note"], "a\x00b"), "params.order.note: contains a NUL character (U+0000) at character 2, which cannot be stored"),
    ("surrogate-in-unknown-field", _set(O + ["note"], "a\ud800"), "params.order.note: contains an unpaired surrogate (U+D800)"),
]


@pytest.mark.parametrize("change, expected", [pytest.param(c, e, id=i) for i, c, e in REJECTIONS])
def test_rejection_names_the_place(change, expected):
    result = rejected(mutated(change))
    assert expected in result.reason
    assert expected in result.problems[0] or any(expected in p for p in result.problems)


def test_rejection_ids_are_unique():
    ids = [i for i, _, _ in REJECTIONS]
    assert len(ids) == len(set(ids))


def test_negative_quantity_reason_is_exactly_as_specified():
    result = rejected(mutated(_set(L1 + ["quantity"], -2)))
    assert result.reason == "params.order.lines[1].quantity: expected a whole number greater than 0, got -2"
    assert result.order_id == "000100231"


def test_origin_date_without_zone_says_so():
    result = rejected(mutated(_set(O + ["origin_date"], "2026-03-02T09:14:05")))
    assert result.reason == (
        "params.order.origin_date: expected an ISO 8601 date-time with a time zone offset, "
        'such as "2026-03-02T09:14:05+01:00", got "2026-03-02T09:14:05", which has no time zone offset'
    )


def test_invalid_json():
    result = rejected('{"jsonrpc": "2.0", "method": ')
    assert result.reason.startswith("invalid JSON: Expecting value: line 1 column")
    assert result.order_id is None


@pytest.mark.parametrize("text", ["", "   ", "\ufeff{}", "{'a': 1}", '{"a": 1} x'])
def test_invalid_json_variants(text):
    assert rejected(text).reason.startswith("invalid JSON")


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_non_finite_numbers_are_invalid_json(constant):
    text = US_TEXT.replace('"amount": 219.97', f'"amount": {constant}')
    assert constant in text
    assert rejected(text).reason.startswith("invalid JSON")


@pytest.mark.parametrize(
    "text, got", [("[1, 2]", "an array"), ('"order"', '"order"'), ("42", "42"), ("null", "null"), ("true", "true")]
)
def test_not_an_object(text, got):
    assert rejected(text).reason == f"message: expected a JSON object, got {got}"


def test_duplicate_keys_are_rejected_naming_the_object():
    text = US_TEXT.replace('"quantity": 2,', '"quantity": 2, "quantity": 5,')
    result = rejected(text)
    assert result.reason == 'params.order.lines[1]: duplicate key "quantity"'
    assert result.order_id == "000100231"


def test_too_large_without_parsing():
    text = "{" + " " * MAX_BODY_BYTES + "}"
    result = rejected(text)
    assert result.reason == f"message too large: {MAX_BODY_BYTES + 2} bytes, limit 1048576"


def test_too_large_counts_utf8_bytes():
    filler = "é" * (MAX_BODY_BYTES // 2)  # 2 bytes each: just over the limit with the rest of the body
    message = copy.deepcopy(US)
    order_of(message)["note"] = filler
    text = json.dumps(message, ensure_ascii=False)
    size = len(text.encode("utf-8"))
    assert len(text) < MAX_BODY_BYTES < size
    assert rejected(text).reason == f"message too large: {size} bytes, limit 1048576"


def test_at_the_limit_is_parsed():
    text = mutated(_set(O + ["note"], ""))
    text = text[:-1] + " " * (MAX_BODY_BYTES - len(text)) + "}"
    assert len(text.encode("utf-8")) == MAX_BODY_BYTES
    assert isinstance(parse_order_message(text), ParsedOrder)


def test_too_deeply_nested():
    text = mutated(_set(O + ["deep"], json.loads("[" * 150 + "]" * 150)))
    assert "nested more than 100 levels deep" in rejected(text).reason
    assert rejected("[" * 100_000 + "]" * 100_000).reason.startswith("invalid JSON")


@pytest.mark.parametrize("value, reason", [(None, "message body is missing (null)"), (float("nan"), "message body is missing (null)"), (12, "message body is not text but int")])
def test_body_not_text(value, reason):
    assert rejected(value).reason == reason


def test_body_not_utf8():
    assert rejected(b"\xff\xfe{}").reason.startswith("message is not valid UTF-8")


def test_several_problems_up_to_three_joined_deterministically():
    def change(m):
        m["jsonrpc"] = "1.0"
        order_of(m)["store"] = ""
        line(m, 0)["quantity"] = 0
        line(m, 1)["quantity"] = -1
        line(m, 1)["sku"] = None

    text = mutated(change)
    result = rejected(text)
    assert result.reason == (
        'jsonrpc: expected "2.0", got "1.0"; '
        'params.order.store: expected a non-empty string, got ""; '
        "params.order.lines[0].quantity: expected a whole number greater than 0, got 0; "
        "and 2 more problems"
    )
    assert len(result.problems) == 5
    assert rejected(text).reason == result.reason
    assert result.order_id == "000100231"


def test_rejected_order_id_only_when_readable():
    assert rejected(mutated(_set(L0 + ["quantity"], 0))).order_id == "000100231"
    assert rejected(mutated(_set(O + ["id"], 5))).order_id is None
    assert rejected(mutated(_set(O + ["id"], "00\x01"))).order_id is None
    assert rejected(mutated(_set(["method"], "x"))).order_id == "000100231"


def test_rejects_keep_the_body_untruncated():
    long_bad = mutated(_set(O + ["note"], "x" * 200_000)).replace('"quantity": 2', '"quantity": -2')
    batch = parse_messages(frame([long_bad]))
    assert batch.rejects["raw"].iloc[0] == long_bad
    assert batch.rejects["order_id"].iloc[0] == "000100231"
    assert batch.orders.empty and batch.lines.empty


# --------------------------------------------------------------------------
# fuzzing: never raises, nothing lost
# --------------------------------------------------------------------------

SAMPLES = [US, EU]

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.sampled_from(["", " ", "\x00", "\x07", "true", "FALSE", "2026-03-02T09:14:05", "2026-03-02", "a@b.co", "\ud800"]),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(st.lists(children, max_size=3), st.dictionaries(st.text(max_size=5), children, max_size=3)),
    max_leaves=6,
)


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    found = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, prefix + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _paths(value, prefix + (i,))
    return found


@st.composite
def mutated_message(draw) -> Any:
    message = copy.deepcopy(draw(st.sampled_from(SAMPLES)))
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        paths = [p for p in _paths(message) if p]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = message
        for key in path[:-1]:
            parent = parent[key]
        key = path[-1]
        action = draw(st.sampled_from(["delete", "replace", "control", "add", "duplicate"]))
        if action == "delete":
            del parent[key]
        elif action == "replace":
            parent[key] = draw(json_values)
        elif action == "control":
            value = parent[key]
            ch = draw(st.sampled_from(["\x00", "\x01", "\t", "\n", "\x7f", "\x85", "\u2028", "\ud800"]))
            if isinstance(value, str):
                at = draw(st.integers(min_value=0, max_value=len(value)))
                parent[key] = value[:at] + ch + value[at:]
            else:
                parent[key] = ch
        elif action == "add":
            target = parent[key] if isinstance(parent[key], (dict, list)) else parent
            if isinstance(target, dict):
                target[draw(st.text(max_size=8))] = draw(json_values)
            else:
                target.append(draw(json_values))
        elif action == "duplicate" and isinstance(parent, list):
            parent.append(copy.deepcopy(parent[key]))
    text = json.dumps(message, ensure_ascii=draw(st.booleans()), indent=draw(st.sampled_from([None, 2])))
    text_action = draw(st.sampled_from(["none", "none", "truncate", "insert", "replace_char"]))
    if text_action == "truncate":
        text = text[: draw(st.integers(min_value=0, max_value=len(text)))]
    elif text_action == "insert":
        at = draw(st.integers(min_value=0, max_value=len(text)))
        junk = draw(st.binary(min_size=1, max_size=8)).decode("latin-1")
        text = text[:at] + junk + text[at:]
    elif text_action == "replace_char":
        at = draw(st.integers(min_value=0, max_value=max(len(text) - 1, 0)))
        text = text[:at] + draw(st.characters()) + text[at + 1 :]
    return text


any_body = st.one_of(
    mutated_message(),
    mutated_message(),
    mutated_message(),
    st.text(max_size=50),
    st.binary(max_size=30),
    json_values.map(json.dumps),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bodies=st.lists(any_body, min_size=1, max_size=6))
def test_fuzz_never_raises_and_loses_nothing(bodies):
    for text in bodies:
        result = parse_order_message(text)
        assert isinstance(result, (ParsedOrder, Rejection))
        if isinstance(result, Rejection):
            assert result.reason and "internal error" not in result.reason
        else:
            assert result.lines and all(ln.qty > 0 for ln in result.lines)
            assert result.origin_date.utcoffset().total_seconds() == 0
            assert json.loads(result.raw_order)["id"] == result.order_id

    messages = frame(bodies, start=100)
    batch = parse_messages(messages)
    order_ids = set(batch.orders["message_id"])
    reject_ids = set(batch.rejects["message_id"])
    assert len(order_ids) + len(batch.rejects) == len(messages)
    assert order_ids.isdisjoint(reject_ids)
    assert order_ids | reject_ids == set(messages["message_id"])
    assert set(batch.lines["message_id"]) == order_ids
    assert tuple(batch.orders.columns) == ORDER_COLUMNS
    assert tuple(batch.lines.columns) == LINE_COLUMNS
    assert tuple(batch.rejects.columns) == REJECT_COLUMNS
    assert str(batch.orders["origin_date"].dtype) == "datetime64[ns, UTC]"
    assert str(batch.lines["allow_backorders"].dtype) == "boolean"
    by_id = dict(zip(messages["message_id"], messages["body"]))
    for message_id, raw in zip(batch.rejects["message_id"], batch.rejects["raw"]):
        assert raw is by_id[message_id] or raw == by_id[message_id]


def _storable(value: Any) -> bool:
    """No NUL and no unpaired surrogate in any string or key (those are rejected on purpose)."""
    text = json.dumps(value, ensure_ascii=False)
    return "\\u0000" not in text and not any("\ud800" <= ch <= "\udfff" for ch in text)


ORDER_FIELDS = {"id", "store", "origin_date", "language", "customer", "addresses", "payments", "lines", "custom_attributes"}


@settings(max_examples=100, deadline=None)
@given(
    extra=st.dictionaries(
        st.text(min_size=1, max_size=8).filter(lambda k: k not in ORDER_FIELDS),
        json_values,
        max_size=3,
    ).filter(_storable)
)
def test_fuzz_unknown_order_fields_are_kept(extra):
    text = mutated(lambda m: order_of(m).update(extra))
    result = parse_order_message(text)
    assert isinstance(result, ParsedOrder), getattr(result, "reason", None)
    raw = json.loads(result.raw_order)
    for key, value in extra.items():
        assert raw[key] == value


# --------------------------------------------------------------------------
# the fast paths of the parser agree with the full checks they skip
# --------------------------------------------------------------------------

def _as_data(value: Any) -> Any:
    """A read order (pydantic models or the fast reader's namespaces) as nested plain data, leaves with their type."""
    if isinstance(value, BaseModel):
        return {name: _as_data(getattr(value, name)) for name in type(value).model_fields}
    if isinstance(value, SimpleNamespace):
        return {name: _as_data(item) for name, item in vars(value).items()}
    if isinstance(value, list):
        return [_as_data(item) for item in value]
    return (type(value).__name__, repr(value))


def test_fast_paths_are_taken_on_the_samples():
    for text, message in ((US_TEXT, US), (EU_TEXT, EU)):
        found: list = []
        doc = M._loads(text, found)
        assert M._nothing_to_scan(text, found)
        fast = M._read_order(order_of(message))
        assert fast is not None
        assert _as_data(fast) == _as_data(M.OrderIn.model_validate(order_of(message)))
        assert M._raw_order_text(text, doc) == M._raw_value_text(text, ("params", "order"))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=mutated_message())
def test_fast_paths_agree_with_the_full_checks(text):
    found: list = []
    try:
        doc = M._loads(text, found)
    except (ValueError, RecursionError):
        return
    clean = M._nothing_to_scan(text, found)
    if clean:  # the whole-document scan is skipped only when it would find nothing
        assert M._scan_document(doc) == (None, [])
    if not isinstance(doc, dict):
        return
    _, order = M._envelope_problems(doc)
    if order is None:
        return
    if not found:
        assert M._raw_order_text(text, doc) == M._raw_value_text(text, ("params", "order"))
    if clean:  # the fast reading is used on clean documents only
        fast = M._read_order(order)
        try:
            slow = M.OrderIn.model_validate(order)
        except ValidationError:
            slow = None
        assert (fast is None) == (slow is None)
        if fast is not None:
            assert _as_data(fast) == _as_data(slow)


@settings(max_examples=200, deadline=None)
@given(
    keys=st.permutations(["jsonrpc", "id", "method", "params"]),
    params_extra=st.sampled_from([None, "before", "after"]),
    space=st.sampled_from(["", " ", "\n  ", "\t", "\r\n"]),
    message_id=st.sampled_from(['"x"', '"a\\"b,\\\\"', "7", "-3", "null", "1.5", "2e3", "[1]", "{}"]),
)
def test_raw_order_text_whatever_the_key_order_and_white_space(keys, params_extra, space, message_id):
    order_text = US_TEXT[US_TEXT.index('"order"') + len('"order"') :].split(":", 1)[1].strip()
    order_text = order_text[: order_text.rindex("}")].rstrip()[:-1].rstrip()  # params.order as written in the sample
    assert json.loads(order_text) == US["params"]["order"]
    envelope = {"jsonrpc": '"2.0"', "id": message_id, "method": json.dumps(M.METHOD)}
    params = [f'"order"{space}:{space}{order_text}']
    if params_extra == "before":
        params.insert(0, f'"note"{space}:{space}{{"a": [1, "}}"]}}')
    elif params_extra == "after":
        params.append(f'"note"{space}:{space}"}}}}"')
    members = [
        f'"params"{space}:{space}{{{space}{("," + space).join(params)}{space}}}' if k == "params"
        else f'"{k}"{space}:{space}{envelope[k]}'
        for k in keys
    ]
    text = f"{space}{{{space}{(',' + space).join(members)}{space}}}{space}"
    doc = json.loads(text)
    assert M._raw_order_text(text, doc) == order_text
    result = parse_order_message(text)
    assert isinstance(result, ParsedOrder) and result.raw_order == order_text


def _identifier_reference(text: str) -> bool:
    return text != "" and M._CONTROL.search(text) is None and text.strip() == text


@settings(max_examples=500, deadline=None)
@given(text=st.one_of(st.text(), st.text(alphabet=st.sampled_from(" \t\xa0\u2028\x85ab\x00\ud800"))))
def test_printable_fast_path_of_the_text_validators(text):
    def accepts(validator: Callable[[Any], Any]) -> bool:
        try:
            validator(text)
        except Exception:  # noqa: BLE001 - the validators raise PydanticCustomError
            return False
        return True

    if text.isprintable():  # what the fast paths rely on
        assert M._CONTROL.search(text) is None and M._UNSTORABLE.search(text) is None
        assert M._char_problem(text) is None
    assert accepts(M._v_identifier) == _identifier_reference(text)
    assert accepts(M._v_opt_text) == (M._CONTROL.search(text) is None)
    assert accepts(M._v_opt_reference) == (text != "" and M._CONTROL.search(text) is None)
