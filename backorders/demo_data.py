"""Deterministic, realistic demo data for the backorder pipeline: order messages, stock feeds, catalog, responses."""

from __future__ import annotations

import argparse
import functools
import io
import json
import re
import unicodedata
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "CHANNEL_CURRENCY",
    "CHANNEL_SOURCES",
    "CREATE_METHOD",
    "FEED_TIMES_UTC",
    "MALFORMED_KINDS",
    "MESSAGE_KINDS",
    "PAYMENT_METHODS",
    "REGION_SOURCES",
    "SOURCES",
    "DemoData",
    "generate_demo",
    "write_files",
    "write_landing",
]

# --------------------------------------------------------------------------------------------
# The world. These codes match the project's rules files (channels.yaml, payment_methods.yaml).
# --------------------------------------------------------------------------------------------

CREATE_METHOD = "magento.sales.order_management.create"
WRONG_METHOD = "magento.sales.order_management.update"

US_SOURCES = ("WH_PDX", "WH_NJ", "WH_DAL")
EU_SOURCES = ("WH_KOELN", "WH_LEEDS")
SOURCES = US_SOURCES + EU_SOURCES
REGION_SOURCES = {"US": US_SOURCES, "EU": EU_SOURCES}
CHANNEL_SOURCES = {
    "US_WEB": ("WH_PDX", "WH_NJ", "WH_DAL"),
    "US_B2B": ("WH_DAL", "WH_NJ"),
    "EU_WEB": ("WH_KOELN", "WH_LEEDS"),
}
CHANNEL_CURRENCY = {"US_WEB": "USD", "US_B2B": "USD", "EU_WEB": "EUR"}
PAYMENT_METHODS = ("CREDIT_CARD", "PAYPAL", "GIFT_CARD")

# Times of day (UTC) of the replenishment stock feeds: half an hour before each default run.
FEED_TIMES_UTC = ("05:30", "13:30", "21:30")
# Overall supply over the period (initial on-hand plus receipts) as a share of the demand.
STOCK_TO_DEMAND = 0.75

# Message kinds of DemoData.message_labels. "ok" is a good message; the malformed kinds are
# messages the pipeline must quarantine; "duplicate" is a byte-identical re-delivery of a good
# message; "reused_order_id" is a different message that reuses the order id of a good one.
MALFORMED_KINDS = (
    "invalid_json",
    "zero_quantity",
    "missing_sku",
    "naive_origin_date",
    "wrong_method",
    "negative_quantity",
    "fractional_quantity",
)
MESSAGE_KINDS = ("ok", "duplicate", "reused_order_id", *MALFORMED_KINDS)

_REGIONS = ("US", "EU")
_SOURCE_WEIGHTS = {"US": np.array([0.35, 0.40, 0.25]), "EU": np.array([0.6, 0.4])}


@dataclass(frozen=True)
class _Channel:
    store: str
    region: int  # index into _REGIONS
    prefix: str  # order id prefix
    share: float  # share of the orders
    b2b: bool
    curve_tz: str  # time zone whose clock drives the daily order curve
    addr_ref: str
    ship_ref: str
    pay_ref: str


_CHANNELS = (
    _Channel("US_WEB", 0, "US", 0.62, False, "America/Chicago", "ADDR-1", "ADDR-2", "PAY-1"),
    _Channel("US_B2B", 0, "B2B", 0.08, True, "America/Chicago", "BILL", "SHIP-1", "PMT-1"),
    _Channel("EU_WEB", 1, "EU", 0.30, False, "Europe/Berlin", "A1", "A2", "P1"),
)

# Relative order intensity per local hour 0..23 and per weekday (Monday first).
_CURVE_B2C = np.array(
    [0.30, 0.18, 0.10, 0.07, 0.06, 0.09, 0.20, 0.40, 0.60, 0.75, 0.85, 0.95,
     1.05, 1.00, 0.95, 0.95, 1.00, 1.10, 1.30, 1.60, 1.85, 1.80, 1.35, 0.75]
)
_CURVE_B2B = np.array(
    [0.02, 0.01, 0.01, 0.01, 0.02, 0.05, 0.25, 0.80, 1.60, 1.90, 1.90, 1.60,
     1.20, 1.60, 1.80, 1.70, 1.40, 0.90, 0.40, 0.20, 0.12, 0.08, 0.05, 0.03]
)
_DOW_B2C = np.array([1.00, 0.97, 0.97, 1.00, 1.05, 1.10, 1.25])
_DOW_B2B = np.array([1.10, 1.10, 1.10, 1.05, 0.90, 0.12, 0.08])

# Lines per order (1..5) and quantities per line.
_NLINES_P_B2C = np.array([0.52, 0.27, 0.11, 0.06, 0.04])
_NLINES_P_B2B = np.array([0.25, 0.25, 0.20, 0.15, 0.15])
_QTY_B2C = (np.array([1, 2, 3, 4, 5, 6]), np.array([0.66, 0.20, 0.08, 0.03, 0.02, 0.01]))
_QTY_B2B = (
    np.array([1, 2, 3, 4, 5, 6, 8, 10, 12, 20]),
    np.array([0.14, 0.18, 0.15, 0.12, 0.10, 0.09, 0.07, 0.07, 0.05, 0.03]),
)

# Catalog: (code, [(variant code, name, price in USD)], colour codes; "" means no colour).
_COLOURS = {
    "GRN": "green", "ORG": "orange", "GRY": "grey", "BLU": "blue",
    "RED": "red", "BLK": "black", "WHT": "white", "": "",
}
_SIZES = ("S", "M", "L", "XL")
_CATEGORIES: list[tuple[str, list[tuple[str, str, int]], list[str]]] = [
    ("TENT", [("1P", "One-person tent", 119), ("2P", "Two-person tent", 150), ("3P", "Three-person tent", 219),
              ("4P", "Four-person tent", 289)], ["GRN", "ORG", "GRY"]),
    ("SBAG", [("0C", "Sleeping bag, comfort 0 C", 129), ("5C", "Sleeping bag, comfort 5 C", 99),
              ("M10", "Down sleeping bag, comfort -10 C", 259)], ["BLU", "RED", "BLK"]),
    ("PAD", [("R", "Sleeping pad, regular", 59), ("L", "Sleeping pad, long", 69),
             ("XW", "Sleeping pad, extra wide", 89)], ["BLU", "ORG"]),
    ("STAKE", [("AL-8", "Aluminium tent stakes, pack of 8", 35), ("AL-12", "Aluminium tent stakes, pack of 12", 45),
               ("TI-6", "Titanium tent stakes, pack of 6", 49)], [""]),
    ("MUG", [("ENAMEL", "Enamel mug", 18), ("STEEL", "Steel camp mug", 15), ("TRAVEL", "Insulated travel mug", 29)],
     ["BLU", "RED", "WHT", "BLK"]),
    ("BOTTLE", [("750", "Water bottle, 750 ml", 25), ("1L", "Water bottle, 1 l", 29)], ["BLU", "GRN", "BLK", "WHT"]),
    ("STOVE", [("CAN", "Canister stove", 49), ("LIQ", "Multi-fuel stove", 139)], [""]),
    ("POT", [("1L", "Cook pot, 1 l", 35), ("SET", "Cook set, 3 pieces", 69)], [""]),
    ("LAMP", [("HEAD", "Headlamp, 350 lm", 39), ("LANT", "Camping lantern", 45)], ["BLK", "RED"]),
    ("PACK", [("22", "Daypack, 22 l", 79), ("38", "Hiking pack, 38 l", 149), ("60", "Trekking pack, 60 l", 229)],
     ["GRN", "BLU", "BLK", "RED"]),
    ("JKT", [(f"RAIN-{s}", f"Rain jacket, size {s}", 129) for s in _SIZES], ["BLU", "RED", "BLK"]),
    ("FLEECE", [(s, f"Fleece pullover, size {s}", 69) for s in _SIZES], ["GRY", "GRN", "BLU"]),
    ("SOCK", [(f"MERINO-{s}", f"Merino hiking socks, size {s}", 22) for s in _SIZES], ["GRY", "BLK"]),
    ("GLOVE", [(s, f"Softshell gloves, size {s}", 35) for s in _SIZES], ["BLK"]),
    ("CHAIR", [("FOLD", "Folding camp chair", 59), ("LITE", "Ultralight chair", 119)], ["GRY", "GRN"]),
    ("TABLE", [("ROLL", "Roll-up camp table", 89)], [""]),
    ("COOLER", [("25", "Cooler, 25 l", 149), ("45", "Cooler, 45 l", 229)], ["WHT", "BLU"]),
    ("HAMMOCK", [("SGL", "Single hammock", 49), ("DBL", "Double hammock", 69)], ["GRN", "ORG", "BLU"]),
    ("POLE", [("AL", "Trekking poles, aluminium, pair", 69), ("CF", "Trekking poles, carbon, pair", 139)], [""]),
    ("KNIFE", [("FOLD", "Folding knife", 39), ("MULTI", "Multi-tool", 79)], [""]),
    ("FILTER", [("SQZ", "Squeeze water filter", 39), ("PUMP", "Pump water filter", 99)], [""]),
    ("TARP", [("3X3", "Tarp, 3 x 3 m", 59), ("4X4", "Tarp, 4 x 4 m", 79)], ["GRN", "GRY"]),
    ("HAT", [("SUN", "Sun hat", 29), ("BEANIE", "Wool beanie", 25)], ["GRN", "BLK", "RED"]),
]
_SERIES = ("Trailhead", "Summit", "Ridge", "Basecamp", "Canyon", "Alpine", "Meadow", "Coastal", "Timber", "Glacier")


def _build_combos() -> tuple[list[str], list[str], np.ndarray]:
    codes, names, prices = [], [], []
    for cat, variants, colours in _CATEGORIES:
        for vcode, vname, price in variants:
            for col in colours:
                codes.append(f"{cat}-{vcode}-{col}" if col else f"{cat}-{vcode}")
                names.append(f"{vname}, {_COLOURS[col]}" if col else vname)
                prices.append(price)
    return codes, names, np.array(prices, dtype=np.float64)


_COMBO_CODES, _COMBO_NAMES, _COMBO_PRICES = _build_combos()

# People and places. Names are realistic (some non-ASCII), e-mail domains are reserved ones.
_US_FIRST = ("Dana", "Alex", "Jordan", "Taylor", "Morgan", "Casey", "Jamie", "Riley", "Avery", "Sam", "Chris",
             "Maria", "James", "Linda", "Robert", "Olivia", "Ethan", "Sofia", "Noah", "Emma", "Liam", "Ava",
             "Mason", "Grace", "Daniel", "Priya", "Wei", "Carlos", "Aisha", "Hannah")
_US_LAST = ("Reyes", "Smith", "Johnson", "Williams", "Brown", "Garcia", "Miller", "Davis", "Martinez", "Lopez",
            "Wilson", "Anderson", "Thomas", "Moore", "Jackson", "Lee", "Nguyen", "Patel", "Kim", "Clark",
            "O'Brien", "Walker", "Young", "Hall", "Allen", "King", "Wright", "Scott", "Green", "Baker")
_US_STREETS = ("Pine Street", "Oak Avenue", "Maple Drive", "Cedar Lane", "Elm Street", "Washington Blvd",
               "Lake Road", "Hillcrest Avenue", "Main Street", "Park Place", "Sunset Drive", "River Road",
               "Highland Avenue", "Church Street", "Spring Street", "Mill Road")
# city, state, zip range, area code, sales tax rate, time zone, weight
_US_CITIES = (
    ("Portland", "OR", 97201, 97239, "503", "0.0", "America/Los_Angeles", 5),
    ("Seattle", "WA", 98101, 98199, "206", "0.1025", "America/Los_Angeles", 5),
    ("San Francisco", "CA", 94102, 94134, "415", "0.08625", "America/Los_Angeles", 6),
    ("Los Angeles", "CA", 90001, 90089, "213", "0.095", "America/Los_Angeles", 9),
    ("Denver", "CO", 80202, 80239, "303", "0.0881", "America/Denver", 5),
    ("Phoenix", "AZ", 85003, 85054, "602", "0.086", "America/Phoenix", 4),
    ("Dallas", "TX", 75201, 75254, "214", "0.0825", "America/Chicago", 6),
    ("Austin", "TX", 78701, 78759, "512", "0.0825", "America/Chicago", 5),
    ("Chicago", "IL", 60601, 60661, "312", "0.1025", "America/Chicago", 8),
    ("Minneapolis", "MN", 55401, 55488, "612", "0.08025", "America/Chicago", 4),
    ("Atlanta", "GA", 30303, 30363, "404", "0.089", "America/New_York", 5),
    ("Newark", "NJ", 7102, 7114, "973", "0.06625", "America/New_York", 3),
    ("New York", "NY", 10001, 10282, "212", "0.08875", "America/New_York", 10),
    ("Boston", "MA", 2108, 2137, "617", "0.0625", "America/New_York", 5),
    ("Philadelphia", "PA", 19102, 19154, "215", "0.08", "America/New_York", 5),
    ("Miami", "FL", 33125, 33199, "305", "0.07", "America/New_York", 5),
)
_EU_NAMES = {
    "DE": (("Jonas", "Lena", "Lukas", "Anna", "Felix", "Marie", "Paul", "Sophie", "Jürgen", "Katrin", "Max", "Hannah"),
           ("Becker", "Müller", "Schmidt", "Schneider", "Fischer", "Weber", "Wagner", "Hoffmann", "Schäfer", "Koch",
            "Richter", "Klein")),
    "FR": (("Léa", "Louis", "Chloé", "Hugo", "Camille", "Jules", "Manon", "Lucas", "Inès", "Théo"),
           ("Martin", "Bernard", "Dubois", "Thomas", "Robert", "Petit", "Durand", "Lefèvre", "Moreau", "Girard")),
    "NL": (("Daan", "Emma", "Sem", "Julia", "Lucas", "Tess", "Bram", "Sanne"),
           ("de Jong", "Jansen", "de Vries", "van den Berg", "Bakker", "Visser", "Smit", "Meijer")),
}
_EU_STREETS = {
    "DE": ("Lindenallee", "Hauptstrasse", "Bahnhofstrasse", "Gartenweg", "Schillerstrasse", "Ringstrasse",
           "Goethestrasse", "Am Markt", "Kirchgasse", "Bergstrasse"),
    "FR": ("rue de la Paix", "avenue Victor Hugo", "rue des Lilas", "boulevard Voltaire", "rue du Moulin",
           "place de la République"),
    "NL": ("Keizersgracht", "Prinsengracht", "Dorpsstraat", "Kerkstraat", "Stationsweg", "Molenweg"),
}
# city, country, zip range, name/street style, language, VAT rate, time zone, phone prefix, weight
_EU_CITIES = (
    ("Koeln", "DE", 50667, 51149, "DE", "de_DE", "0.19", "Europe/Berlin", "+49 221", 6),
    ("Berlin", "DE", 10115, 14199, "DE", "de_DE", "0.19", "Europe/Berlin", "+49 30", 9),
    ("Muenchen", "DE", 80331, 81929, "DE", "de_DE", "0.19", "Europe/Berlin", "+49 89", 7),
    ("Hamburg", "DE", 20095, 22769, "DE", "de_DE", "0.19", "Europe/Berlin", "+49 40", 6),
    ("Wien", "AT", 1010, 1230, "DE", "de_AT", "0.2", "Europe/Vienna", "+43 1", 4),
    ("Paris", "FR", 75001, 75020, "FR", "fr_FR", "0.2", "Europe/Paris", "+33 1", 7),
    ("Lyon", "FR", 69001, 69009, "FR", "fr_FR", "0.2", "Europe/Paris", "+33 4", 3),
    ("Bruxelles", "BE", 1000, 1210, "FR", "fr_BE", "0.21", "Europe/Brussels", "+32 2", 3),
    ("Amsterdam", "NL", 1011, 1109, "NL", "nl_NL", "0.21", "Europe/Amsterdam", "+31 20", 5),
    ("Rotterdam", "NL", 3011, 3089, "NL", "nl_NL", "0.21", "Europe/Amsterdam", "+31 10", 3),
)
_COMPANY_A = ("Cedar", "Summit", "Blue Ridge", "Northwind", "Granite", "Pioneer", "Riverbend", "Timberline",
              "Coastal", "Prairie", "Red Rock", "Evergreen")
_COMPANY_B = ("Outfitters", "Supply", "Outdoor", "Adventure", "Trading", "Gear", "Camp Store", "Sports")
_COMPANY_C = ("LLC", "Inc.", "Co.")
_IP_NETS = ("192.0.2", "198.51.100", "203.0.113")  # documentation ranges (RFC 5737)
_CARD_BRANDS = (("VISA", "MASTERCARD", "AMEX"), (0.55, 0.32, 0.13))
_GATEWAY = {"CREDIT_CARD": "ADYEN", "PAYPAL": "PAYPAL", "GIFT_CARD": "GIVEX"}
_LEAD_DAYS = np.array([2, 3, 5, 7, 10, 14, 21, 30, 45])
_LEAD_P = np.array([0.05, 0.12, 0.18, 0.2, 0.15, 0.13, 0.09, 0.06, 0.02])


def _q(s: str) -> str:
    """A JSON string literal (UTF-8 kept as is) of text built from the vocabulary (checked below)."""
    return f'"{s}"'


def _check_vocabulary() -> None:
    """Every vocabulary string must be a JSON string without escapes, so that _q is exact and fast."""
    words: list[str] = [*_COMBO_NAMES, *_SERIES, *_US_FIRST, *_US_LAST, *_US_STREETS, *_COMPANY_A, *_COMPANY_B,
                        *_COMPANY_C, *(c[0] for c in _US_CITIES), *(c[0] for c in _EU_CITIES)]
    for first, last in _EU_NAMES.values():
        words += [*first, *last]
    for streets in _EU_STREETS.values():
        words += list(streets)
    for w in words:
        if json.dumps(w, ensure_ascii=False) != f'"{w}"' or "\n" in w:
            raise AssertionError(f"vocabulary word needs escaping: {w!r}")


_check_vocabulary()


@functools.lru_cache(maxsize=None)
def _fold(s: str) -> str:
    """ASCII, lower case, letters and digits only: for e-mail local parts and slugs."""
    a = unicodedata.normalize("NFKD", s).encode("ascii", "ignore").decode().lower()
    return re.sub(r"[^a-z0-9]", "", a)


# --------------------------------------------------------------------------------------------
# Result
# --------------------------------------------------------------------------------------------


def _utc(values: np.ndarray) -> pd.DatetimeIndex:
    """Microseconds since the epoch (int64) as a tz-aware UTC index."""
    return pd.DatetimeIndex(np.asarray(values, dtype=np.int64).astype("datetime64[us]")).tz_localize("UTC")


@dataclass
class DemoData:
    """The generated landing data. Frames have a RangeIndex and are sorted by their arrival time.

    ``message_labels`` is aligned row by row with ``order_messages`` and says what each message is
    (``kind``: one of MESSAGE_KINDS; ``order_id``: the order id the message was generated for;
    ``n_lines``: its number of lines); the pipeline must never read it, tests and demos may.
    """

    order_messages: pd.DataFrame
    stock_levels: pd.DataFrame
    catalog_items: pd.DataFrame
    shipment_confirmations: pd.DataFrame
    customer_responses: pd.DataFrame
    message_labels: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["kind", "order_id", "n_lines"]))

    def summary(self) -> dict[str, Any]:
        """Headline figures of the demo (for logs and the CLI)."""
        lab = self.message_labels
        ok = lab["kind"] == "ok"
        return {
            "messages": len(self.order_messages),
            "orders_ok": int(ok.sum()),
            "lines_ok": int(lab.loc[ok, "n_lines"].sum()),
            "lines_generated": int(lab.loc[~lab["kind"].isin(("duplicate", "reused_order_id")), "n_lines"].sum()),
            "malformed": int(lab["kind"].isin(MALFORMED_KINDS).sum()),
            "duplicates": int((lab["kind"] == "duplicate").sum()),
            "reused_order_ids": int((lab["kind"] == "reused_order_id").sum()),
            "skus": len(self.catalog_items),
            "stock_rows": len(self.stock_levels),
            "stock_feeds": int(self.stock_levels["as_of"].nunique()),
            "customer_responses": len(self.customer_responses),
        }


# --------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------


def _sample_times(rng: np.random.Generator, n: int, start_s: int, days: int, tz: str, b2b: bool) -> np.ndarray:
    """n order times (seconds since the epoch) over the period, following the local daily curve."""
    minutes = pd.date_range(pd.Timestamp(start_s, unit="s", tz="UTC"), periods=days * 1440, freq="min")
    local = minutes.tz_convert(tz)
    curve, dow = (_CURVE_B2B, _DOW_B2B) if b2b else (_CURVE_B2C, _DOW_B2C)
    w = curve[np.asarray(local.hour)] * dow[np.asarray(local.day_of_week)]
    cdf = np.cumsum(w)
    cdf /= cdf[-1]
    idx = np.minimum(np.searchsorted(cdf, rng.random(n), side="right"), len(cdf) - 1)
    return start_s + idx.astype(np.int64) * 60 + rng.integers(0, 60, n)


def _utc_offsets(secs: np.ndarray, tz_names: np.ndarray) -> np.ndarray:
    """UTC offset in seconds of each instant in its time zone (DST aware)."""
    off = np.zeros(len(secs), dtype=np.int64)
    for tz in sorted(set(tz_names.tolist())):
        if tz == "UTC":
            continue
        m = tz_names == tz
        idx = pd.DatetimeIndex(secs[m].astype("datetime64[s]")).tz_localize("UTC")
        off[m] = (idx.tz_convert(tz).tz_localize(None).as_unit("s").asi8 - idx.tz_localize(None).as_unit("s").asi8)
    return off


def _offset_str(off: int) -> str:
    sign = "+" if off >= 0 else "-"
    a = abs(int(off))
    return f"{sign}{a // 3600:02d}:{a % 3600 // 60:02d}"


def _iso_local(secs: np.ndarray, off: np.ndarray) -> list[str]:
    """ISO 8601 local time with offset, e.g. 2026-03-02T11:40:00+01:00."""
    local = np.datetime_as_string((secs + off).astype("datetime64[s]"), unit="s").tolist()
    offs = {int(o): _offset_str(int(o)) for o in np.unique(off)}
    return [f"{t}{offs[o]}" for t, o in zip(local, off.tolist())]


def _alnum(rng: np.random.Generator, n: int, width: int, alphabet: bytes) -> list[str]:
    a = np.frombuffer(alphabet, dtype=np.uint8)
    codes = a[rng.integers(0, len(a), size=(n, width))]
    return [s.decode() for s in np.ascontiguousarray(codes).view(f"S{width}").ravel().tolist()]


def _uuids(rng: np.random.Generator, n: int) -> list[str]:
    """Version-4 style UUID strings derived from the generator (no uuid4, no wall clock)."""
    b = np.frombuffer(rng.bytes(16 * n), dtype=np.uint8).reshape(n, 16).copy()
    b[:, 6] = (b[:, 6] & 0x0F) | 0x40
    b[:, 8] = (b[:, 8] & 0x3F) | 0x80
    h = b.tobytes().hex()
    return [f"{h[i:i + 8]}-{h[i + 8:i + 12]}-{h[i + 12:i + 16]}-{h[i + 16:i + 20]}-{h[i + 20:i + 32]}"
            for i in range(0, 32 * n, 32)]


def _customers(rng: np.random.Generator, n: int, ch: _Channel) -> dict[str, np.ndarray]:
    """A pool of n customers of a channel with their customer address as a JSON fragment."""
    out: dict[str, np.ndarray] = {}
    if ch.region == 0:
        cw = np.array([c[7] for c in _US_CITIES], dtype=float)
        city = rng.choice(len(_US_CITIES), size=n, p=cw / cw.sum())
        first = rng.integers(0, len(_US_FIRST), n)
        last = rng.integers(0, len(_US_LAST), n)
        num = rng.integers(10, 9900, n)
        street = rng.integers(0, len(_US_STREETS), n)
        zip_u = rng.random(n)
        phone_nn = rng.integers(0, 100, n)
        has_phone = rng.random(n) < (0.95 if ch.b2b else 0.7)
        email_sfx = np.where(rng.random(n) < 0.4, rng.integers(1, 100, n), 0)
        company = [None] * n
        if ch.b2b:
            ca, cb, cc = (rng.integers(0, len(x), n) for x in (_COMPANY_A, _COMPANY_B, _COMPANY_C))
            company = [f"{_COMPANY_A[a]} {_COMPANY_B[b]} {_COMPANY_C[c]}" for a, b, c in zip(ca, cb, cc)]
        frags, tzs, rates, firsts, lasts = [], [], [], [], []
        for i in range(n):
            c = _US_CITIES[city[i]]
            f, l = _US_FIRST[first[i]], _US_LAST[last[i]]
            z = c[2] + int(zip_u[i] * (c[3] - c[2] + 1))
            if ch.b2b:
                email = f"orders.{_fold(company[i])}{i % 97}@example.com"
            else:
                email = f"{_fold(f)}.{_fold(l)}{email_sfx[i] or ''}@example.com"
            parts = [f'"first_name":{_q(f)}', f'"last_name":{_q(l)}']
            if company[i]:
                parts.append(f'"company":{_q(company[i])}')
            parts += [f'"address1":{_q(f"{num[i]} {_US_STREETS[street[i]]}")}', f'"city":{_q(c[0])}',
                      f'"state":"{c[1]}"', f'"zip":"{z:05d}"', '"country_code":"US"']
            if has_phone[i]:
                parts.append(f'"phone":"+1 {c[4]} 555 01{phone_nn[i]:02d}"')
            frags.append(f'{{"reference":"{ch.addr_ref}","address_type":"customer",'
                         + ",".join(parts) + f',"email":{_q(email)}}}')
            tzs.append(c[6])
            rates.append(c[5])
            firsts.append(f)
            lasts.append(l)
        out["country"] = np.array(["US"] * n, dtype=object)
        out["language"] = np.array(["en_US"] * n, dtype=object)
    else:
        cw = np.array([c[9] for c in _EU_CITIES], dtype=float)
        city = rng.choice(len(_EU_CITIES), size=n, p=cw / cw.sum())
        fu, lu, su = rng.random(n), rng.random(n), rng.random(n)
        num = rng.integers(1, 180, n)
        zip_u = rng.random(n)
        nl_letters = _alnum(rng, n, 2, b"ABCDEFGHJKLMNPRSTVWXZ")
        phone = rng.integers(1000000, 9999999, n)
        has_phone = rng.random(n) < 0.5
        email_sfx = np.where(rng.random(n) < 0.4, rng.integers(1, 100, n), 0)
        frags, tzs, rates, firsts, lasts, countries, langs = [], [], [], [], [], [], []
        for i in range(n):
            c = _EU_CITIES[city[i]]
            style = c[4]
            fn, ln = _EU_NAMES[style]
            f, l = fn[int(fu[i] * len(fn))], ln[int(lu[i] * len(ln))]
            st = _EU_STREETS[style][int(su[i] * len(_EU_STREETS[style]))]
            addr = f"{num[i]} {st}" if style == "FR" else f"{st} {num[i]}"
            z = c[2] + int(zip_u[i] * (c[3] - c[2] + 1))
            zs = f"{z:04d} {nl_letters[i]}" if c[1] == "NL" else (f"{z:04d}" if c[1] in ("AT", "BE") else f"{z:05d}")
            email = f"{_fold(f)}.{_fold(l)}{email_sfx[i] or ''}@example.org"
            parts = [f'"first_name":{_q(f)}', f'"last_name":{_q(l)}', f'"address1":{_q(addr)}',
                     f'"city":{_q(c[0])}', f'"zip":"{zs}"', f'"country_code":"{c[1]}"']
            if has_phone[i]:
                parts.append(f'"phone":"{c[8]} {phone[i]}"')
            frags.append(f'{{"reference":"{ch.addr_ref}","address_type":"customer",'
                         + ",".join(parts) + f',"email":{_q(email)}}}')
            tzs.append(c[7])
            rates.append(c[6])
            firsts.append(f)
            lasts.append(l)
            countries.append(c[1])
            langs.append(c[5])
        out["country"] = np.array(countries, dtype=object)
        out["language"] = np.array(langs, dtype=object)
    out["address"] = np.array(frags, dtype=object)
    out["tz"] = np.array(tzs, dtype=object)
    out["tax_rate"] = np.array(rates, dtype=object)
    out["first"] = np.array(firsts, dtype=object)
    out["last"] = np.array(lasts, dtype=object)
    if ch.b2b:
        exempt = rng.random(n) < 0.7  # resellers with a resale certificate pay no sales tax
        out["tax_rate"] = np.where(exempt, "0.0", out["tax_rate"]).astype(object)
        out["type"] = np.array(["REGISTERED"] * n, dtype=object)
        out["segment"] = np.array(["B2B"] * n, dtype=object)
    else:
        out["type"] = np.where(rng.random(n) < 0.65, "REGISTERED", "GUEST").astype(object)
        out["segment"] = np.where(rng.random(n) < 0.03, "B2B", "B2C").astype(object)
    lead = {"US_WEB": "1", "US_B2B": "3", "EU_WEB": "5"}[ch.store]  # disjoint id ranges per channel
    out["id"] = np.array([f"C-{lead}{i + 1:07d}" for i in range(n)], dtype=object)
    return out


def _shipping_addresses(rng: np.random.Generator, region: int, first: np.ndarray, last: np.ndarray) -> list[str]:
    """JSON fragments (without reference/type) of a separate ship-to address for the same person."""
    n = len(first)
    if region == 0:
        city = rng.integers(0, len(_US_CITIES), n)
        num = rng.integers(10, 9900, n)
        street = rng.integers(0, len(_US_STREETS), n)
        zu = rng.random(n)
        out = []
        for i in range(n):
            c = _US_CITIES[city[i]]
            z = c[2] + int(zu[i] * (c[3] - c[2] + 1))
            out.append(f'"first_name":{_q(first[i])},"last_name":{_q(last[i])},'
                       f'"address1":{_q(f"{num[i]} {_US_STREETS[street[i]]}")},"city":{_q(c[0])},'
                       f'"state":"{c[1]}","zip":"{z:05d}","country_code":"US"')
        return out
    city = rng.integers(0, len(_EU_CITIES), n)
    num = rng.integers(1, 180, n)
    su, zu = rng.random(n), rng.random(n)
    letters = _alnum(rng, n, 2, b"ABCDEFGHJKLMNPRSTVWXZ")
    out = []
    for i in range(n):
        c = _EU_CITIES[city[i]]
        st = _EU_STREETS[c[4]][int(su[i] * len(_EU_STREETS[c[4]]))]
        addr = f"{num[i]} {st}" if c[4] == "FR" else f"{st} {num[i]}"
        z = c[2] + int(zu[i] * (c[3] - c[2] + 1))
        zs = f"{z:04d} {letters[i]}" if c[1] == "NL" else (f"{z:04d}" if c[1] in ("AT", "BE") else f"{z:05d}")
        out.append(f'"first_name":{_q(first[i])},"last_name":{_q(last[i])},"address1":{_q(addr)},'
                   f'"city":{_q(c[0])},"zip":"{zs}","country_code":"{c[1]}"')
    return out


_ORDER_TPL = (
    '{"jsonrpc":"2.0","id":"%s","method":"%s","params":{"order":{"id":"%s","store":"%s","ip":"%s",'
    '"vat_country":"%s","origin":"%s","origin_date":"%s","language":"%s",'
    '"customer":{"id":"%s","type":"%s","segment":"%s"},"addresses":[%s],'
    '"payments":[{"reference":"%s","currency":"%s","transactions":[{"payment_method":"%s",%s"amount":%.2f,'
    '"billing_address_reference":"%s","gateway_information":{"gateway_id":"%s",'
    '"authorization_status":"AUTHORIZED","transaction_id":"%s"}}]}],"lines":[%s]%s}}}'
)
_LINE_TPL = (
    '{"id":"%s-%d","line_number":%d,"product_type":"PHYSICAL","sku":"%s","product_name":%s,"quantity":%d,'
    '"shipping_address_reference":"%s","payment_reference":"%s",'
    '"amount":{"gross_amount":%.2f,"net_amount":%.2f,"tax_amount":%.2f,"tax_rate":%s}%s}'
)


def _render(o: dict[str, np.ndarray], ln: dict[str, np.ndarray], sku_codes: np.ndarray,
            sku_names_q: np.ndarray, chunk: int = 50_000) -> list[str]:
    """JSON-RPC bodies of the orders o; ln holds their lines, sorted by ln['order'] (position in o).

    Works in chunks of orders so that the intermediate line texts stay small.
    """
    n = len(o["order_id"])
    line_end = np.cumsum(np.bincount(ln["order"], minlength=n))
    out: list[str] = []
    for a in range(0, n, chunk):
        b = min(n, a + chunk)
        la = int(line_end[a - 1]) if a else 0
        lb = int(line_end[b - 1])
        oc = {key: v[a:b] for key, v in o.items()}
        lc = {key: v[la:lb] for key, v in ln.items()}
        lc["order"] = lc["order"] - a
        out += _render_chunk(oc, lc, sku_codes, sku_names_q)
    return out


def _render_chunk(o: dict[str, np.ndarray], ln: dict[str, np.ndarray], sku_codes: np.ndarray,
                  sku_names_q: np.ndarray) -> list[str]:
    n = len(o["order_id"])
    lo = ln["order"]
    gross = ln["qty"] * ln["unit_cents"]
    rate = o["tax_rate_f"][lo]
    net = np.rint(gross / (1.0 + rate)).astype(np.int64)
    tax = gross - net
    counts = np.bincount(lo, minlength=n)
    total = np.bincount(lo, weights=gross.astype(np.float64), minlength=n)
    line_strs = [
        _LINE_TPL % t
        for t in zip(
            o["order_id"][lo].tolist(), ln["line_number"].tolist(), ln["line_number"].tolist(),
            sku_codes[ln["sku"]].tolist(), sku_names_q[ln["sku"]].tolist(), ln["qty"].tolist(),
            o["ship_ref"][lo].tolist(), o["pay_ref"][lo].tolist(), (gross / 100).tolist(), (net / 100).tolist(),
            (tax / 100).tolist(), o["tax_rate"][lo].tolist(), ln["extra"].tolist(),
        )
    ]
    ends = np.cumsum(counts).tolist()
    starts = [0, *ends[:-1]]
    joined = [",".join(line_strs[a:b]) for a, b in zip(starts, ends)]
    return [
        _ORDER_TPL % t
        for t in zip(
            o["rpc_id"].tolist(), o["method"].tolist(), o["order_id"].tolist(), o["store"].tolist(),
            o["ip"].tolist(), o["country"].tolist(), o["origin"].tolist(), o["origin_date"].tolist(),
            o["language"].tolist(), o["cust_id"].tolist(), o["cust_type"].tolist(), o["segment"].tolist(),
            o["addresses"].tolist(), o["pay_ref"].tolist(), o["currency"].tolist(), o["pay_method"].tolist(),
            o["submethod"].tolist(), (total / 100).tolist(), o["bill_ref"].tolist(), o["gateway"].tolist(),
            o["txn_id"].tolist(), joined, o["order_attrs"].tolist(),
        )
    ]


def _weighted_sample(rng: np.random.Generator, cands: np.ndarray, weights: np.ndarray, k: int) -> np.ndarray:
    """k distinct candidates, with probability increasing with weight (Efraimidis-Spirakis keys)."""
    k = min(k, len(cands))
    if k <= 0:
        return cands[:0]
    keys = np.log(rng.random(len(cands))) / np.maximum(weights, 1e-12)
    top = np.argsort(-keys, kind="stable")[:k]
    return np.sort(cands[top])


def _stochastic_round(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    f = np.floor(x)
    return (f + (rng.random(len(x)) < (x - f))).astype(np.int64)


def _dirichlet_rows(rng: np.random.Generator, base: np.ndarray, m: int, concentration: float) -> np.ndarray:
    g = rng.gamma(base * concentration, size=(m, len(base)))
    g = np.maximum(g, 1e-12)
    return g / g.sum(axis=1, keepdims=True)


def generate_demo(
    n_lines: int = 5000,
    *,
    seed: int = 7,
    start: datetime = datetime(2026, 3, 2, tzinfo=UTC),
    days: int = 3,
    n_skus: int | None = None,
    malformed_ratio: float = 0.005,
) -> DemoData:
    """Generate a deterministic demo world of about n_lines order lines over `days` days from `start`.

    The same arguments always give identical frames. With malformed_ratio > 0 the messages also
    hold malformed ones (about that share of the messages, at least 3 when n_lines >= 1000), one
    exact duplicate of a good message and one message reusing the order id of a good one; with
    malformed_ratio == 0 every message is good.
    """
    if n_lines < 1:
        raise ValueError("n_lines must be at least 1")
    if days < 1:
        raise ValueError("days must be at least 1")
    if start.tzinfo is None or start.utcoffset() is None:
        raise ValueError("start must be timezone-aware")
    if not 0 <= malformed_ratio < 0.5:
        raise ValueError("malformed_ratio must be in [0, 0.5)")
    n_skus = max(200, n_lines // 5) if n_skus is None else int(n_skus)
    if n_skus < 10:
        raise ValueError("n_skus must be at least 10")
    start_s = int(start.timestamp())
    start_us = start_s * 1_000_000
    (r_cat, r_cust, r_ord, r_line, r_msg, r_stock, r_anom, r_resp) = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(8)
    )

    # ---- catalog ---------------------------------------------------------------------------
    n_combo = len(_COMBO_CODES)
    perm = r_cat.permutation(n_combo)
    ci = perm[np.arange(n_skus) % n_combo]
    series = np.arange(n_skus) // n_combo
    combo_codes = np.array(_COMBO_CODES, dtype=object)
    combo_names = np.array(_COMBO_NAMES, dtype=object)
    sku_codes = np.array(
        [c if s == 0 else f"{c}-{s:02d}" for c, s in zip(combo_codes[ci].tolist(), series.tolist())], dtype=object
    )
    sku_names = [
        nm if s == 0 else f"{_SERIES[s % len(_SERIES)]} {nm[0].lower()}{nm[1:]}"
        for nm, s in zip(combo_names[ci].tolist(), series.tolist())
    ]
    sku_names_q = np.array([_q(x) for x in sku_names], dtype=object)
    usd = _COMBO_PRICES[ci] * np.where(series == 0, 1.0, r_cat.lognormal(0.0, 0.25, n_skus))
    usd_whole = np.maximum(2, np.rint(usd)).astype(np.int64)
    usd_cents = usd_whole * 100 - 1
    eur_whole = np.maximum(2, np.rint(usd_whole * 0.95)).astype(np.int64)
    eur_cents = eur_whole * 100 - np.array([0, 10, 5, 1])[r_cat.integers(0, 4, n_skus)]
    b2b_cents = np.rint(usd_cents * 0.82).astype(np.int64)
    # assortment: both regions, US only, EU only
    assort = r_cat.choice(3, size=n_skus, p=[0.7, 0.2, 0.1])
    for reg_excl in (2, 1):  # make sure each region has enough SKUs for a 5-line order
        in_reg = assort != reg_excl
        if in_reg.sum() < 5:
            assort[np.flatnonzero(~in_reg)[: 5 - in_reg.sum()]] = 0
    in_region = np.stack([assort != 2, assort != 1], axis=1)  # [sku, region]
    rank = r_cat.permutation(n_skus)
    pop = 1.0 / (rank + 4.0) ** 1.05  # Zipf-Mandelbrot popularity
    region_w = pop[:, None] * r_cat.lognormal(0.0, 0.35, (n_skus, 2)) * in_region

    # ---- orders ----------------------------------------------------------------------------
    shares = np.array([c.share for c in _CHANNELS])
    est = int(n_lines / 1.9 * 1.1) + 20
    chan = np.empty(0, dtype=np.int64)
    k = np.empty(0, dtype=np.int64)
    while k.sum() < n_lines:
        c_new = r_ord.choice(3, size=est, p=shares)
        k_new = np.where(
            c_new == 1, r_ord.choice(5, size=est, p=_NLINES_P_B2B), r_ord.choice(5, size=est, p=_NLINES_P_B2C)
        ) + 1
        chan, k = np.concatenate([chan, c_new]), np.concatenate([k, k_new])
    cum = np.cumsum(k)
    n_orders = int(np.searchsorted(cum, n_lines) + 1)
    chan, k = chan[:n_orders], k[:n_orders].copy()
    k[-1] -= int(cum[n_orders - 1] - n_lines)

    secs = np.empty(n_orders, dtype=np.int64)
    for ci_, ch in enumerate(_CHANNELS):
        m = chan == ci_
        secs[m] = _sample_times(r_ord, int(m.sum()), start_s, days, ch.curve_tz, ch.b2b)
    order_sort = np.lexsort((np.arange(n_orders), secs))  # time order; the draw order breaks ties
    chan, k, secs = chan[order_sort], k[order_sort], secs[order_sort]

    o: dict[str, np.ndarray] = {}
    o["store"] = np.array([c.store for c in _CHANNELS], dtype=object)[chan]
    order_ids = np.empty(n_orders, dtype=object)
    cust_idx = np.zeros(n_orders, dtype=np.int64)
    fields = ("address", "tz", "tax_rate", "first", "last", "country", "language", "type", "segment", "id")
    cust_cols = {f: np.empty(n_orders, dtype=object) for f in fields}
    for ci_, ch in enumerate(_CHANNELS):
        m = np.flatnonzero(chan == ci_)
        base = int(r_ord.integers(10_000, 400_000))
        order_ids[m] = [f"{ch.prefix}-{base + i:08d}" for i in range(len(m))]
        pool_n = max(5, len(m) // 6) if ch.b2b else max(20, int(len(m) * 0.75))
        pool = _customers(r_cust, pool_n, ch)
        cust_idx[m] = r_cust.integers(0, pool_n, len(m))
        for f in fields:
            cust_cols[f][m] = pool[f][cust_idx[m]]
    o["order_id"] = order_ids
    is_b2b = chan == 1
    region = np.array([c.region for c in _CHANNELS])[chan]
    o["country"] = cust_cols["country"]
    o["language"] = cust_cols["language"]
    o["cust_id"] = cust_cols["id"]
    o["cust_type"] = cust_cols["type"]
    o["segment"] = cust_cols["segment"]
    o["tax_rate"] = cust_cols["tax_rate"]
    o["tax_rate_f"] = np.array([float(x) for x in o["tax_rate"].tolist()])
    # origin_date: the US web store stamps UTC, the B2B portal and the EU store local time
    tz_of_order = np.where(chan == 0, "UTC", cust_cols["tz"]).astype(object)
    off = _utc_offsets(secs, tz_of_order)
    o["origin_date"] = np.array(_iso_local(secs, off), dtype=object)
    origin_i = np.where(is_b2b, 2, np.where(r_ord.random(n_orders) < 0.22, 1, 0))
    o["origin"] = np.array(["FRONTEND", "MOBILE_APP", "B2B_PORTAL"], dtype=object)[origin_i]
    o["ip"] = np.array(
        [f"{_IP_NETS[a]}.{b}" for a, b in zip(r_ord.integers(0, 3, n_orders), r_ord.integers(1, 255, n_orders))],
        dtype=object,
    )
    o["rpc_id"] = np.array(_uuids(r_ord, n_orders), dtype=object)
    o["method"] = np.full(n_orders, CREATE_METHOD, dtype=object)
    refs = {f: np.array([getattr(c, f) for c in _CHANNELS], dtype=object)[chan]
            for f in ("addr_ref", "ship_ref", "pay_ref")}
    o["bill_ref"] = refs["addr_ref"]
    o["pay_ref"] = refs["pay_ref"]
    o["currency"] = np.array([CHANNEL_CURRENCY[c.store] for c in _CHANNELS], dtype=object)[chan]
    # addresses: the customer's, plus a separate ship-to address for some orders
    sep_ship = r_ord.random(n_orders) < np.where(is_b2b, 0.6, 0.1)
    addresses = cust_cols["address"].copy()
    o["ship_ref"] = np.where(sep_ship, refs["ship_ref"], refs["addr_ref"]).astype(object)
    for reg in (0, 1):
        m = np.flatnonzero(sep_ship & (region == reg))
        ship = _shipping_addresses(r_ord, reg, cust_cols["first"][m], cust_cols["last"][m])
        addresses[m] = [f'{a},{{"reference":"{r}","address_type":"shipping",{s}}}'
                        for a, r, s in zip(addresses[m].tolist(), refs["ship_ref"][m].tolist(), ship)]
    o["addresses"] = addresses
    # payment
    u = r_ord.random(n_orders)
    p_cc = np.select([chan == 0, chan == 1], [0.70, 0.85], 0.45)
    p_pp = np.select([chan == 0, chan == 1], [0.22, 0.15], 0.45)
    pm = np.where(u < p_cc, 0, np.where(u < p_cc + p_pp, 1, 2))
    o["pay_method"] = np.array(PAYMENT_METHODS, dtype=object)[pm]
    brand = r_ord.choice(3, size=n_orders, p=_CARD_BRANDS[1])
    o["submethod"] = np.array(["", *(f'"payment_submethod":"{b}",' for b in _CARD_BRANDS[0])],
                              dtype=object)[np.where(pm == 0, brand + 1, 0)]
    o["gateway"] = np.array([_GATEWAY[m] for m in PAYMENT_METHODS], dtype=object)[pm]
    card_txn = [str(x) for x in r_ord.integers(10**15, 10**16, n_orders).tolist()]
    pp_txn = _alnum(r_ord, n_orders, 17, b"0123456789ABCDEFGHJKLMNPRSTUVWXYZ")
    gc_txn = [f"GC{x}" for x in r_ord.integers(10**13, 10**14, n_orders).tolist()]
    o["txn_id"] = np.array([(c, p, g)[m] for c, p, g, m in zip(card_txn, pp_txn, gc_txn, pm.tolist())], dtype=object)
    # order custom attributes
    express = r_ord.random(n_orders) < np.where(is_b2b, 0.1, 0.18)
    no_attrs = (r_ord.random(n_orders) < 0.04) & ~is_b2b
    attrs_i = np.where(no_attrs, 0, np.where(express, 2, 1))
    o["order_attrs"] = np.array(
        ["", ',"custom_attributes":[{"name":"shipping_method","value":"STANDARD"}]',
         ',"custom_attributes":[{"name":"shipping_method","value":"EXPRESS"}]'], dtype=object)[attrs_i]

    # ---- lines -----------------------------------------------------------------------------
    line_order = np.repeat(np.arange(n_orders), k)
    n_tot = len(line_order)
    first_of_order = np.concatenate([[0], np.cumsum(k)[:-1]])
    line_number = np.arange(n_tot) - np.repeat(first_of_order, k) + 1
    line_region = region[line_order]
    cdfs = []
    for reg in (0, 1):
        c = np.cumsum(region_w[:, reg])
        cdfs.append(c / c[-1])

    def draw(idx: np.ndarray, uniform: bool) -> np.ndarray:
        out = np.empty(len(idx), dtype=np.int64)
        for reg in (0, 1):
            m = line_region[idx] == reg
            if uniform:
                cands = np.flatnonzero(in_region[:, reg])
                out[m] = cands[r_line.integers(0, len(cands), int(m.sum()))]
            else:
                out[m] = np.minimum(np.searchsorted(cdfs[reg], r_line.random(int(m.sum())), side="right"), n_skus - 1)
        return out

    sku = draw(np.arange(n_tot), False)
    for it in range(200):  # SKUs distinct within an order
        dup = np.zeros(n_tot, dtype=bool)
        for j in range(1, 5):
            dup[j:] |= (line_order[j:] == line_order[:-j]) & (sku[j:] == sku[:-j])
        if not dup.any():
            break
        di = np.flatnonzero(dup)
        sku[di] = draw(di, it >= 20)
    else:  # pragma: no cover - practically unreachable
        raise RuntimeError("could not draw distinct SKUs per order")
    b2b_line = is_b2b[line_order]
    qty = np.where(
        b2b_line, r_line.choice(_QTY_B2B[0], size=n_tot, p=_QTY_B2B[1]),
        r_line.choice(_QTY_B2C[0], size=n_tot, p=_QTY_B2C[1]),
    ).astype(np.int64)
    unit_cents = np.where(line_region == 1, eur_cents[sku], np.where(b2b_line, b2b_cents[sku], usd_cents[sku]))
    # line attributes: allowBackorders (EU_WEB disables backorders per channel, so it is set more often there)
    lchan = chan[line_order]
    u = r_line.random(n_tot)
    p_true = np.select([lchan == 0, lchan == 1], [0.06, 0.02], 0.15)
    p_false = np.select([lchan == 0, lchan == 1], [0.04, 0.03], 0.03)
    attr = np.where(u < p_true, 1, np.where(u < p_true + p_false, 2, 0))
    spelling = r_line.random(n_tot)
    vals_true = np.where(spelling < 0.05, "TRUE", "true")
    vals_false = np.where(spelling < 0.05, "False", "false")
    attr_name = np.where(r_line.random(n_tot) < 0.04, "allowBackorder", "allowBackorders")
    attr_frag = [
        "" if a == 0 else f',"custom_attributes":[{{"name":"{nm}","value":"{vt if a == 1 else vf}"}}]'
        for a, nm, vt, vf in zip(attr.tolist(), attr_name.tolist(), vals_true.tolist(), vals_false.tolist())
    ]
    # promised delivery dates for some orders (end of the promised day, in the order's offset)
    promise = (r_line.random(n_orders) < np.select([chan == 0, chan == 1], [0.15, 0.25], 0.05))
    pdays = np.where(express, r_line.integers(2, 5, n_orders), r_line.integers(5, 13, n_orders))
    pdate = np.datetime_as_string(((secs + off) // 86400 + pdays).astype("datetime64[D]")).tolist()
    off_s = {int(x): _offset_str(int(x)) for x in np.unique(off)}
    offs = [off_s[x] for x in off.tolist()]
    promise_frag = np.array(
        [f',"promise_delivery_date":"{d}T23:59:59{s}"' if p else "" for d, s, p in zip(pdate, offs, promise.tolist())],
        dtype=object,
    )
    extra = np.array([p + a for p, a in zip(promise_frag[line_order].tolist(), attr_frag)], dtype=object)
    ln = {"order": line_order, "line_number": line_number, "sku": sku, "qty": qty, "unit_cents": unit_cents,
          "extra": extra}

    bodies = _render(o, ln, sku_codes, sku_names_q)
    delay_ms = np.where(
        r_msg.random(n_orders) < 0.9, r_msg.integers(800, 30_000, n_orders), r_msg.integers(30_000, 900_000, n_orders)
    )
    recv_us = secs * 1_000_000 + delay_ms * 1000
    kinds = np.full(n_orders, "ok", dtype=object)

    # ---- anomalies ---------------------------------------------------------------------------
    extra_bodies: list[str] = []
    extra_recv: list[int] = []
    extra_kind: list[str] = []
    extra_order: list[str] = []
    extra_lines: list[int] = []
    if malformed_ratio > 0 and n_orders >= 3:
        n_bad = int(round(malformed_ratio * n_orders))
        if n_lines >= 1000:
            n_bad = max(3, n_bad)
        n_bad = min(n_bad, n_orders - 2)
        picks = r_anom.permutation(n_orders)[: n_bad + 2]
        bad_pos = np.sort(picks[:n_bad])
        for j, p in enumerate(bad_pos.tolist()):
            kind = MALFORMED_KINDS[j % len(MALFORMED_KINDS)]
            bodies[p] = _corrupt(bodies[p], kind, r_anom)
            kinds[p] = kind
        dup_pos, reuse_pos = int(picks[n_bad]), int(picks[n_bad + 1])
        # an exact re-delivery of a good message
        extra_bodies.append(bodies[dup_pos])
        extra_recv.append(int(recv_us[dup_pos] + r_anom.integers(30, 900) * 1_000_000))
        extra_kind.append("duplicate")
        extra_order.append(str(order_ids[dup_pos]))
        extra_lines.append(int(k[dup_pos]))
        # the same order id again, with different content (line 1 quantity, time, message id)
        sel = np.array([reuse_pos])
        o2 = {key: v[sel] for key, v in o.items()}
        later = int(r_anom.integers(20 * 60, 180 * 60))
        o2["rpc_id"] = np.array(_uuids(r_anom, 1), dtype=object)
        o2["origin_date"] = np.array(_iso_local(secs[sel] + later, off[sel]), dtype=object)
        lm = line_order == reuse_pos
        ln2 = {key: v[lm].copy() for key, v in ln.items()}
        ln2["order"][:] = 0
        ln2["qty"][0] += 1
        extra_bodies.append(_render(o2, ln2, sku_codes, sku_names_q)[0])
        extra_recv.append(int((secs[reuse_pos] + later) * 1_000_000 + r_anom.integers(1_000, 60_000) * 1000))
        extra_kind.append("reused_order_id")
        extra_order.append(str(order_ids[reuse_pos]))
        extra_lines.append(int(k[reuse_pos]))
        anomalous = set(picks.tolist())
    else:
        anomalous = set()

    all_bodies = bodies + extra_bodies
    all_recv = np.concatenate([recv_us, np.array(extra_recv, dtype=np.int64)])
    all_kind = np.concatenate([kinds, np.array(extra_kind, dtype=object)])
    all_order = np.concatenate([order_ids, np.array(extra_order, dtype=object)])
    all_lines = np.concatenate([k, np.array(extra_lines, dtype=np.int64)])
    msg_sort = np.lexsort((np.arange(len(all_recv)), all_recv))
    order_messages = pd.DataFrame(
        {"received_at": _utc(all_recv[msg_sort]), "body": pd.Series([all_bodies[i] for i in msg_sort], dtype=str)}
    )
    message_labels = pd.DataFrame(
        {"kind": pd.Series(all_kind[msg_sort], dtype=str), "order_id": pd.Series(all_order[msg_sort], dtype=str),
         "n_lines": all_lines[msg_sort].astype(np.int64)}
    )

    # ---- stock -----------------------------------------------------------------------------
    demand = np.zeros((n_skus, 2), dtype=np.int64)
    for reg in (0, 1):
        m = line_region == reg
        demand[:, reg] = np.bincount(sku[m], weights=qty[m], minlength=n_skus).astype(np.int64)
    total_d = demand.sum(axis=1)
    cands = np.flatnonzero(total_d > 0)
    top = set(np.argsort(-total_d, kind="stable")[:5].tolist())
    oos_cands = np.array([c for c in cands.tolist() if c not in top], dtype=np.int64)
    n_oos = max(2, int(round(0.02 * len(cands))))
    oos = _weighted_sample(r_stock, oos_cands, np.sqrt(total_d[oos_cands]), n_oos)
    rest_cands = np.setdiff1d(cands, oos)
    n_rest = max(2, int(round(0.04 * len(cands))))
    restock = _weighted_sample(r_stock, rest_cands, np.sqrt(total_d[rest_cands]), n_rest)
    sku_class = np.zeros(n_skus, dtype=np.int64)  # 0 normal, 1 long out of stock, 2 restocked mid-period
    sku_class[oos] = 1
    sku_class[restock] = 2

    feed_times = _feed_times(start_s, days)
    n_feeds = len(feed_times)
    raw = np.zeros((n_skus, 2))
    tail = np.zeros((n_skus, 2), dtype=np.int64)
    # a little stock of unsold long-tail SKUs, at most about 10% of the supply
    n_tail = int((((sku_class == 0)[:, None] & (demand == 0) & in_region)).sum())
    p_tail = min(0.35, 0.1 * STOCK_TO_DEMAND * demand.sum() / max(1.0, n_tail * 2.5))
    for reg in (0, 1):
        d = demand[:, reg].astype(float)
        f = r_stock.lognormal(0.0, 0.5, n_skus)
        g = r_stock.uniform(0.8, 1.3, n_skus)
        raw[:, reg] = np.select([sku_class == 0, sku_class == 2], [d * f, d * g], 0.0) * in_region[:, reg]
        t = (sku_class == 0) & (demand[:, reg] == 0) & in_region[:, reg] & (r_stock.random(n_skus) < p_tail)
        tail[:, reg] = np.where(t, r_stock.integers(1, 5, n_skus), 0)
    target = STOCK_TO_DEMAND * demand.sum() - tail.sum()
    scale = max(target, 0.0) / raw.sum() if raw.sum() > 0 else 0.0

    onhand0 = np.zeros((len(SOURCES), n_skus), dtype=np.int64)  # initial on-hand
    ev_src, ev_sku, ev_feed, ev_amt = [], [], [], []
    src_offset = {0: 0, 1: len(US_SOURCES)}
    for reg in (0, 1):
        srcs = REGION_SOURCES[_REGIONS[reg]]
        ns = len(srcs)
        supply = _stochastic_round(r_stock, raw[:, reg] * scale)
        share0 = r_stock.uniform(0.4, 0.85, n_skus)
        init = np.where(sku_class == 0, np.rint(supply * share0).astype(np.int64), 0)
        rest = supply - init
        init = init + tail[:, reg]
        p = _dirichlet_rows(r_stock, _SOURCE_WEIGHTS[_REGIONS[reg]], n_skus, 3.0)
        onhand0[src_offset[reg]: src_offset[reg] + ns] = r_stock.multinomial(init, p).T
        # normal SKUs: the rest arrives in 1-3 receipts at random feeds, each at one source
        nm = np.flatnonzero((sku_class == 0) & (rest > 0))
        kk = r_stock.choice([1, 2, 3], size=len(nm), p=[0.45, 0.35, 0.2])
        rs = np.repeat(nm, kk)
        w = r_stock.random(len(rs)) + 0.25
        grp = np.repeat(np.arange(len(nm)), kk)
        wsum = np.bincount(grp, weights=w, minlength=len(nm))
        amt = np.floor(rest[rs] * w / wsum[grp]).astype(np.int64)
        short = rest[nm] - np.bincount(grp, weights=amt, minlength=len(nm)).astype(np.int64)
        first_rows = (np.cumsum(kk) - kk).astype(np.int64)
        amt[first_rows] += short
        ev_sku.append(rs)
        ev_src.append(src_offset[reg] + r_stock.choice(ns, size=len(rs), p=_SOURCE_WEIGHTS[_REGIONS[reg]]))
        ev_feed.append(r_stock.integers(0, n_feeds, len(rs)))
        ev_amt.append(amt)
        # restocked SKUs: everything arrives at one feed in the middle of the period
        rm = np.flatnonzero((sku_class == 2) & (rest > 0))
        lo_f, hi_f = n_feeds // 3, max(n_feeds // 3, (2 * n_feeds) // 3)
        feed_r = r_stock.integers(lo_f, hi_f + 1, len(rm))
        split = r_stock.multinomial(rest[rm], _dirichlet_rows(r_stock, _SOURCE_WEIGHTS[_REGIONS[reg]], len(rm), 3.0))
        rr, ss = np.nonzero(split)
        ev_sku.append(rm[rr])
        ev_src.append(src_offset[reg] + ss)
        ev_feed.append(feed_r[rr])
        ev_amt.append(split[rr, ss])
    e_src, e_sku = np.concatenate(ev_src), np.concatenate(ev_sku)
    e_feed, e_amt = np.concatenate(ev_feed), np.concatenate(ev_amt)
    keep = e_amt > 0
    key = (e_src[keep].astype(np.int64) * n_skus + e_sku[keep]) * n_feeds + e_feed[keep]
    ukey, inv = np.unique(key, return_inverse=True)
    uamt = np.bincount(inv, weights=e_amt[keep]).astype(np.int64)
    pair = ukey // n_feeds
    feed = ukey % n_feeds
    u_src, u_sku = pair // n_skus, pair % n_skus
    cs = np.cumsum(uamt)
    new_pair = np.concatenate([[True], pair[1:] != pair[:-1]]) if len(pair) else np.zeros(0, dtype=bool)
    grp_start = np.maximum.accumulate(np.where(new_pair, np.arange(len(pair)), 0)) if len(pair) else pair
    before = np.where(grp_start > 0, cs[grp_start - 1], 0) if len(pair) else pair
    level = onhand0[u_src, u_sku] + cs - before

    init_src, init_sku = [], []
    for reg in (0, 1):
        skus_r = np.flatnonzero(in_region[:, reg])
        for j in range(len(REGION_SOURCES[_REGIONS[reg]])):
            init_src.append(np.full(len(skus_r), src_offset[reg] + j))
            init_sku.append(skus_r)
    i_src, i_sku = np.concatenate(init_src), np.concatenate(init_sku)
    code_rank = np.empty(n_skus, dtype=np.int64)
    code_rank[np.argsort(sku_codes.astype(str), kind="stable")] = np.arange(n_skus)
    i_order = np.lexsort((code_rank[i_sku], i_src))
    i_src, i_sku = i_src[i_order], i_sku[i_order]
    init_asof = start_us - 3600 * 1_000_000
    feed_recv = feed_times + r_stock.integers(40, 600, n_feeds) * 1_000_000
    f_order = np.lexsort((code_rank[u_sku], u_src, feed))
    st_src = np.concatenate([i_src, u_src[f_order]])
    st_sku = np.concatenate([i_sku, u_sku[f_order]])
    st_qty = np.concatenate([onhand0[i_src, i_sku], level[f_order]])
    st_asof = np.concatenate([np.full(len(i_src), init_asof), feed_times[feed[f_order]]])
    st_recv = np.concatenate([np.full(len(i_src), init_asof + 240 * 1_000_000), feed_recv[feed[f_order]]])
    stock_levels = pd.DataFrame(
        {
            "source_code": pd.Series(np.array(SOURCES, dtype=object)[st_src], dtype=str),
            "sku": pd.Series(sku_codes[st_sku], dtype=str),
            "quantity": st_qty.astype(np.int64),
            "as_of": _utc(st_asof),
            "received_at": _utc(st_recv),
        }
    )

    # ---- catalog frame -----------------------------------------------------------------------
    u = r_cat.random(n_skus)
    allowed = pd.array(np.where(u < 0.13, True, False), dtype="boolean")
    allowed[u >= 0.20] = pd.NA
    lead = pd.array(r_cat.choice(_LEAD_DAYS, size=n_skus, p=_LEAD_P), dtype="Int64")
    lead[r_cat.random(n_skus) < 0.12] = pd.NA
    updated = start_us - r_cat.integers(86_400, 90 * 86_400, n_skus) * 1_000_000
    catalog_items = pd.DataFrame(
        {"sku": pd.Series(sku_codes, dtype=str), "backorders_allowed": allowed, "restock_lead_days": lead,
         "updated_at": _utc(updated)}
    )

    # ---- customer responses: a few cancellations of real, good orders --------------------------
    good = np.array([i for i in range(n_orders) if i not in anomalous], dtype=np.int64)
    n_cancel = min(len(good), max(3, int(round(0.002 * n_orders))))
    has_oos = np.zeros(n_orders, dtype=bool)
    has_oos[line_order[sku_class[sku] == 1]] = True
    pref = good[has_oos[good]]
    first = _weighted_sample(r_resp, pref, np.ones(len(pref)), n_cancel // 2 + n_cancel % 2)
    others = np.setdiff1d(good, first)
    chosen = np.sort(np.concatenate([first, _weighted_sample(r_resp, others, np.ones(len(others)),
                                                             n_cancel - len(first))]))
    # the buyer answers after the order arrived and before the end of the period (at most 36 h later)
    end_us = start_us + days * 86_400 * 1_000_000
    window = np.clip(np.minimum(end_us - 600 * 1_000_000, recv_us[chosen] + 36 * 3600 * 1_000_000)
                     - recv_us[chosen], 60 * 1_000_000, None)
    responded = recv_us[chosen] + (r_resp.uniform(0.05, 1.0, len(chosen)) * window).astype(np.int64)
    resp_recv = responded + r_resp.integers(1, 120, len(chosen)) * 1_000_000
    r_sort = np.lexsort((chosen, resp_recv))
    customer_responses = pd.DataFrame(
        {"order_id": pd.Series(order_ids[chosen][r_sort], dtype=str),
         "response": pd.Series(["cancel"] * len(chosen), dtype=str),
         "responded_at": _utc(responded[r_sort]), "received_at": _utc(resp_recv[r_sort])}
    )

    shipment_confirmations = pd.DataFrame(
        {"shipment_request_id": pd.Series([], dtype=str), "shipped_at": _utc(np.zeros(0, dtype=np.int64)),
         "received_at": _utc(np.zeros(0, dtype=np.int64))}
    )
    return DemoData(order_messages, stock_levels, catalog_items, shipment_confirmations, customer_responses,
                    message_labels)


def _feed_times(start_s: int, days: int) -> np.ndarray:
    """Replenishment feed times (microseconds since the epoch) strictly inside the period."""
    day0 = start_s - start_s % 86400
    end = start_s + days * 86400
    out = []
    for d in range(days + 1):
        for hhmm in FEED_TIMES_UTC:
            h, m = (int(x) for x in hhmm.split(":"))
            t = day0 + d * 86400 + h * 3600 + m * 60
            if start_s < t < end:
                out.append(t * 1_000_000)
    return np.array(out, dtype=np.int64)


_QTY_RE = re.compile(r'"quantity":\d+')
_SKU_RE = re.compile(r'"sku":"[^"]*",')
_DATE_RE = re.compile(r'"origin_date":"([^"]+)"')


def _corrupt(body: str, kind: str, rng: np.random.Generator) -> str:
    """Turn a good message into a malformed one of the given kind (one defect only)."""
    if kind == "invalid_json":
        return body[: int(len(body) * rng.uniform(0.3, 0.9))]
    if kind == "zero_quantity":
        return _QTY_RE.sub('"quantity":0', body, count=1)
    if kind == "negative_quantity":
        return _QTY_RE.sub('"quantity":-1', body, count=1)
    if kind == "fractional_quantity":
        return _QTY_RE.sub('"quantity":1.5', body, count=1)
    if kind == "missing_sku":
        return _SKU_RE.sub("", body, count=1)
    if kind == "naive_origin_date":
        return _DATE_RE.sub(lambda m: f'"origin_date":"{m.group(1)[:19]}"', body, count=1)
    if kind == "wrong_method":
        return body.replace(f'"method":"{CREATE_METHOD}"', f'"method":"{WRONG_METHOD}"', 1)
    raise ValueError(f"unknown malformed kind {kind!r}")


# --------------------------------------------------------------------------------------------
# Writers
# --------------------------------------------------------------------------------------------

_LANDING_COLUMNS = {
    "landing.order_messages": ("order_messages", ("received_at", "body")),
    "landing.stock_levels": ("stock_levels", ("source_code", "sku", "quantity", "as_of", "received_at")),
    "landing.catalog_items": ("catalog_items", ("sku", "backorders_allowed", "restock_lead_days", "updated_at")),
    "landing.shipment_confirmations": ("shipment_confirmations", ("shipment_request_id", "shipped_at", "received_at")),
    "landing.customer_responses": ("customer_responses", ("order_id", "response", "responded_at", "received_at")),
}


def write_landing(conn: Any, data: DemoData, *, chunk_rows: int = 200_000) -> dict[str, int]:
    """COPY the demo into the landing tables over a psycopg2 connection; the caller commits.

    Returns the number of rows written per table. landing.shipment_confirmations is written only
    when the demo has confirmations (normally it has none).
    """
    counts: dict[str, int] = {}
    with conn.cursor() as cur:
        for table, (attr, cols) in _LANDING_COLUMNS.items():
            frame: pd.DataFrame = getattr(data, attr)
            if attr == "shipment_confirmations" and frame.empty:
                continue
            sql = f"COPY {table} ({', '.join(cols)}) FROM STDIN WITH (FORMAT csv)"
            sub = frame.loc[:, list(cols)]
            for i in range(0, len(sub), chunk_rows):
                buf = io.StringIO()
                sub.iloc[i: i + chunk_rows].to_csv(buf, index=False, header=False, lineterminator="\n")
                buf.seek(0)
                cur.copy_expert(sql, buf)
            counts[table] = len(sub)
    return counts


def _iso_utc(ts: pd.Series | pd.DatetimeIndex) -> list[str]:
    naive = pd.DatetimeIndex(ts).tz_convert("UTC").tz_localize(None).as_unit("us").to_numpy()
    return [f"{t}+00:00" for t in np.datetime_as_string(naive.astype("datetime64[s]"), unit="s").tolist()]


def write_files(folder: Path, data: DemoData) -> list[Path]:
    """Write the file drop: orders-<date>.jsonl per day of receipt and stock-<as_of>.csv per feed."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    msgs = data.order_messages
    days = msgs["received_at"].dt.tz_convert("UTC").dt.strftime("%Y-%m-%d")
    for day in sorted(days.unique().tolist()):
        bodies = msgs.loc[days == day, "body"].tolist()
        if any("\n" in b or "\r" in b for b in bodies):
            raise ValueError("a message body contains a line break; it cannot go into a .jsonl file")
        path = folder / f"orders-{day}.jsonl"
        with open(path, "w", encoding="utf-8", newline="\n") as fh:
            fh.write("\n".join(bodies) + "\n")
        written.append(path)
    st = data.stock_levels
    asof_key = st["as_of"].dt.tz_convert("UTC").dt.strftime("%Y%m%dT%H%M%SZ")
    asof_iso = pd.Series(_iso_utc(st["as_of"]), index=st.index)
    for key in sorted(asof_key.unique().tolist()):
        m = asof_key == key
        rows = [
            f"{s},{k},{q},{a}"
            for s, k, q, a in zip(st.loc[m, "source_code"].tolist(), st.loc[m, "sku"].tolist(),
                                  st.loc[m, "quantity"].tolist(), asof_iso[m].tolist())
        ]
        path = folder / f"stock-{key}.csv"
        with open(path, "w", encoding="utf-8", newline="\n") as fh:
            fh.write("source_code,sku,quantity,as_of\n" + "\n".join(rows) + "\n")
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    """CLI: python -m backorders.demo_data [--lines N] [--seed S] [--days D] [--out FOLDER]."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--lines", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--days", type=int, default=3)
    ap.add_argument("--start", type=datetime.fromisoformat, default=datetime(2026, 3, 2, tzinfo=UTC))
    ap.add_argument("--out", type=Path, help="write the file drop (jsonl + csv) into this folder")
    args = ap.parse_args(argv)
    start = args.start if args.start.tzinfo else args.start.replace(tzinfo=UTC)
    data = generate_demo(args.lines, seed=args.seed, start=start, days=args.days)
    print(json.dumps(data.summary(), indent=2))
    if args.out:
        for p in write_files(args.out, data):
            print(p)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
