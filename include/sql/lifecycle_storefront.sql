-- oms.storefront_availability at T: a current-state table, recomputed in full every run (a rewind and re-run gives
-- the same rows). One row per channel of {stg}.lifecycle_channels and SKU seen in the catalog or the stock feeds by T.
-- available_qty: on hand at T at the channel's sources, minus quantity hard-allocated and not shipped (after this
-- run's allocation), minus safety stock, never below 0 per source. backorderable: the catalog flag where explicit,
-- else the channel's backorders_enabled. message: 'In stock' when available_qty > 0; else the channel's template
-- with the catalog's restock lead time when backorderable and the lead time is known; else 'Out of stock'.
DELETE FROM oms.storefront_availability;

WITH on_hand AS (
    SELECT DISTINCT ON (s.sku, s.source_code) s.source_code, s.sku, s.quantity
    FROM landing.stock_levels s
    WHERE s.as_of <= %(t)s AND s.received_at <= %(t)s
      AND {stg}.stock_problem(s.source_code, s.sku, s.quantity, s.as_of) IS NULL   -- quarantined rows never count
    ORDER BY s.sku, s.source_code, s.as_of DESC, s.received_at DESC
),
catalog AS (
    SELECT DISTINCT ON (sku) sku, backorders_allowed, restock_lead_days
    FROM landing.catalog_items
    WHERE (updated_at IS NULL OR updated_at <= %(t)s) AND nullif(trim(sku), '') IS NOT NULL
    ORDER BY sku, updated_at DESC NULLS LAST
),
skus AS (SELECT sku FROM on_hand UNION SELECT sku FROM catalog),
committed AS (
    SELECT r.source_code, l.sku, sum(l.quantity) AS qty
    FROM oms.shipment_requests r JOIN oms.shipment_request_lines l USING (shipment_request_id)
    WHERE r.status = 'REQUESTED'
    GROUP BY r.source_code, l.sku
),
available AS (
    SELECT h.source_code, h.sku,
           greatest(floor(greatest(h.quantity, 0)) - coalesce(c.qty, 0)
                    - coalesce((SELECT max(f.qty) FROM {stg}.safety_stock f
                                WHERE f.source_code IN ('*', h.source_code) AND f.sku IN ('*', h.sku)), 0),
                    0)::bigint AS qty
    FROM on_hand h LEFT JOIN committed c USING (source_code, sku)
),
per_channel AS (
    SELECT ch.store, s.sku, coalesce(sum(a.qty), 0)::bigint AS available_qty,
           coalesce(max(cat.backorders_allowed::int)::boolean, bool_or(ch.backorders_enabled)) AS backorderable,
           max(cat.restock_lead_days) AS lead_days, max(ch.availability_message) AS template
    FROM {stg}.lifecycle_channels ch
    CROSS JOIN skus s
    LEFT JOIN available a ON a.sku = s.sku AND a.source_code = ANY (ch.sources)
    LEFT JOIN catalog cat ON cat.sku = s.sku
    GROUP BY ch.store, s.sku
)
INSERT INTO oms.storefront_availability (store, sku, available_qty, backorderable, message, updated_at)
SELECT store, sku, available_qty, backorderable,
       CASE WHEN available_qty > 0 THEN 'In stock'
            WHEN backorderable AND lead_days IS NOT NULL THEN replace(template, '{days}', lead_days::text)
            ELSE 'Out of stock' END,
       %(t)s
FROM per_channel;
