-- oms.storefront_availability at T: a current-state table, recomputed in full every run (a rewind and re-run gives
-- the same rows). One row per channel of {stg}.lifecycle_channels and SKU seen in the catalog or the stock feeds by T.
-- available_qty: on hand at T at the channel's sources, minus quantity hard-allocated and not shipped (after this
-- run's allocation), minus safety stock, never below 0 per source ({stg}.on_hand: on hand and safety stock at T, staged
-- by stage_on_hand.sql). backorderable: the catalog flag where explicit,
-- else the channel's backorders_enabled. message: 'In stock' when available_qty > 0; else the channel's template
-- with the catalog's restock lead time when backorderable and the lead time is known; else 'Out of stock'.
DELETE FROM oms.storefront_availability;

WITH catalog AS (
    SELECT DISTINCT ON (sku) sku, backorders_allowed, restock_lead_days
    FROM landing.catalog_items
    WHERE (updated_at IS NULL OR updated_at <= %(t)s) AND nullif(trim(sku), '') IS NOT NULL
    ORDER BY sku, updated_at DESC NULLS LAST
),
skus AS (SELECT sku FROM {stg}.on_hand UNION SELECT sku FROM catalog),
-- quantity hard-allocated and not shipped: the open requests (a partial index) and their lines by key, whatever
-- the number of shipped requests in the history
committed AS (
    SELECT r.source_code, l.sku, sum(l.quantity) AS qty
    FROM oms.shipment_requests r
    CROSS JOIN LATERAL (SELECT l.sku, l.quantity FROM oms.shipment_request_lines l
                        WHERE l.shipment_request_id = r.shipment_request_id OFFSET 0) l
    WHERE r.status = 'REQUESTED'
    GROUP BY r.source_code, l.sku
),
available AS (
    SELECT h.source_code, h.sku, greatest(h.qty_on_hand - coalesce(c.qty, 0) - h.qty_safety, 0)::bigint AS qty
    FROM {stg}.on_hand h LEFT JOIN committed c USING (source_code, sku)
),
-- each channel's sources (an equi-join, rather than a filter on the channel's array per stock row)
channel_sources AS (SELECT DISTINCT ch.store, unnest(ch.sources) AS source_code FROM {stg}.lifecycle_channels ch),
channel_qty AS (
    SELECT cs.store, a.sku, sum(a.qty) AS qty FROM available a JOIN channel_sources cs USING (source_code)
    GROUP BY cs.store, a.sku
),
per_channel AS (
    SELECT ch.store, s.sku, coalesce(q.qty, 0)::bigint AS available_qty,
           coalesce(cat.backorders_allowed, ch.backorders_enabled) AS backorderable,
           cat.restock_lead_days AS lead_days, ch.availability_message AS template
    FROM {stg}.lifecycle_channels ch
    CROSS JOIN skus s
    LEFT JOIN channel_qty q ON q.store = ch.store AND q.sku = s.sku
    LEFT JOIN catalog cat ON cat.sku = s.sku
)
INSERT INTO oms.storefront_availability (store, sku, available_qty, backorderable, message, updated_at)
SELECT store, sku, available_qty, backorderable,
       CASE WHEN available_qty > 0 THEN 'In stock'
            WHEN backorderable AND lead_days IS NOT NULL THEN replace(template, '{days}', lead_days::text)
            ELSE 'Out of stock' END,
       %(t)s
FROM per_channel;
