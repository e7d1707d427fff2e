"""Whether an order line may wait as a backorder, and which rule decided it (domain.md §2)."""
from __future__ import annotations

import numpy as np
import pandas as pd


def decide_backorderable(line_attribute: pd.Series, catalog_flag: pd.Series, channel_enabled: pd.Series) -> pd.DataFrame:
    """First match wins: the line's allowBackorders attribute, then the catalog's explicit flag, then the channel setting.

    Inputs are aligned series: nullable booleans for the first two (NA = not said), booleans for the channel.
    Returns a frame with `backorderable` (bool) and `backorder_decided_by` (line_attribute, catalog, channel).
    """
    attr = pd.array(line_attribute, dtype="boolean")
    cat = pd.array(catalog_flag, dtype="boolean")
    chan = np.asarray(channel_enabled, dtype=bool)
    has_attr = ~np.asarray(attr.isna())
    has_cat = ~np.asarray(cat.isna())
    decided_by = np.where(has_attr, "line_attribute", np.where(has_cat, "catalog", "channel"))
    value = np.where(has_attr, attr.fillna(False).to_numpy(dtype=bool),
                     np.where(has_cat, cat.fillna(False).to_numpy(dtype=bool), chan))
    return pd.DataFrame({"backorderable": value.astype(bool), "backorder_decided_by": decided_by},
                        index=getattr(line_attribute, "index", None))


def priority_tiers(orders: pd.DataFrame, priority) -> np.ndarray:
    """Priority tier per order from priority.yaml: the first rule whose every given field matches, else default_tier."""
    tiers = np.full(len(orders), priority.default_tier, dtype=np.int64)
    decided = np.zeros(len(orders), dtype=bool)
    for rule in priority.rules:
        match = ~decided
        for field, wanted in rule.when.model_dump(exclude_none=True).items():
            match &= (orders[field].astype("string").fillna("") == wanted).to_numpy(dtype=bool)
        tiers[match] = rule.tier
        decided |= match
    return tiers
