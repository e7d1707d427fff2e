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
ss_all AS (SELECT max(qty) AS qty FROM {stg}.safety_stock WHERE source_code = '*' AND sku = '*'),
ss_source AS (SELECT source_code, max(qty) AS qty FROM {stg}.safety_stock WHERE source_code <> '*' AND sku = '*'
              GROUP BY source_code),
ss_sku AS (SELECT sku, max(qty) AS qty FROM {stg}.safety_stock WHERE source_code = '*' AND sku <> '*' GROUP BY sku),
ss_pair AS (SELECT source_code, sku, max(qty) AS qty FROM {stg}.safety_stock WHERE source_code <> '*' AND sku <> '*'
            GROUP BY source_code, sku),
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
    SELECT h.source_code, h.sku,
           greatest(floor(greatest(h.quantity, 0)) - coalesce(c.qty, 0) - coalesce(greatest((SELECT qty FROM ss_all), f1.qty, f2.qty, f3.qty), 0), 0)::bigint AS qty
    FROM on_hand h LEFT JOIN committed c USING (source_code, sku)
    LEFT JOIN ss_source f1 ON f1.source_code = h.source_code
    LEFT JOIN ss_sku f2 ON f2.sku = h.sku
    LEFT JOIN ss_pair f3 ON f3.source_code = h.source_code AND f3.sku = h.sku
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
