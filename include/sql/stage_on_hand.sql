-- On hand of run T (cycle.stage_on_hand; it needs nothing of the orders, so it runs at the same time as their
-- extract).
-- 1. Intake: every landing.stock_levels row received after the last successful run and up to T is classified once:
--    QUARANTINED (a bad row: missing or unknown source, missing sku, quantity missing, negative, fractional or out of
--    range, as_of missing), NOT_DUE (as_of after T: ignored until a run at or after its as_of, which uses it then) or
--    VALID ({stg}.stock_intake; stage_stock.sql quarantines the bad rows).
-- 2. On hand at T ({stg}.on_hand, every SKU): the latest valid on-hand at or before T (as_of, then received_at), with
--    its safety stock. stage_stock.sql takes the stock for the SKUs in demand from it, the storefront after publish
--    reads it whole.
-- The known sources are spliced in as a constant array (%(sources)s: the sources of channels.yaml, the rows of
-- {stg}.sources): without a sub-select the function is inlined into the queries that call it, rather than run as a
-- plan of its own for every stock row.
CREATE FUNCTION {stg}.stock_problem(source_code text, sku text, quantity numeric, as_of timestamptz)
RETURNS text LANGUAGE sql STABLE AS $$
SELECT CASE
    WHEN source_code IS NULL OR btrim(source_code) = '' THEN 'source_code is missing'
    WHEN NOT (source_code = ANY (%(sources)s::text[]))
        THEN format('unknown source %%s: not a source of any channel in channels.yaml', left(source_code, 64))
    WHEN sku IS NULL OR btrim(sku) = '' THEN 'sku is missing'
    WHEN sku ~ '[[:cntrl:]]' THEN 'sku contains a control character'
    WHEN quantity IS NULL THEN 'quantity is missing'
    WHEN quantity = 'NaN'::numeric THEN 'quantity is not a number'
    WHEN quantity < 0 THEN format('quantity is negative: %%s', quantity)
    WHEN quantity > 2147483647 THEN format('quantity is out of range: %%s', left(quantity::text, 40))
    WHEN quantity <> trunc(quantity) THEN format('quantity is not a whole number: %%s', quantity)
    WHEN as_of IS NULL THEN 'as_of is missing'
END $$;

-- A quarantined row's id: its content's hash and its number among identical rows. Only the quarantined rows are
-- hashed and numbered (the window sorts what it numbers: all 860k rows of a restock took 9 s, the few bad ones
-- nothing); the others have no quarantine id.
CREATE TABLE {stg}.stock_intake AS
WITH since AS (
    SELECT coalesce(max(run_at), '-infinity'::timestamptz) AS t0
    FROM oms.pipeline_runs WHERE run_at < %(t)s AND status = 'SUCCESS'
),
rows AS MATERIALIZED (
    SELECT s.source_code, s.sku, s.quantity, s.as_of, s.received_at,
           {stg}.stock_problem(s.source_code, s.sku, s.quantity, s.as_of) AS problem,
           coalesce(s.source_code, '') || '/' || coalesce(s.sku, '') || '/'
               || coalesce(to_char(s.as_of AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'), '') AS source_ref
    FROM landing.stock_levels s, since
    WHERE s.received_at > since.t0 AND s.received_at <= %(t)s
)
SELECT source_code, sku, quantity, as_of, received_at, problem, source_ref,
       CASE WHEN as_of > %(t)s THEN 'NOT_DUE' ELSE 'VALID' END AS status, NULL::text AS quarantine_id
FROM rows WHERE problem IS NULL
UNION ALL
SELECT source_code, sku, quantity, as_of, received_at, problem, source_ref, 'QUARANTINED',
       'Q-stock-' || substr(row_hash, 1, 16) || '-' || row_number() OVER (PARTITION BY row_hash)
FROM (SELECT r.*, md5(concat_ws('|', r.source_code, r.sku, r.quantity::text,
                                to_char(r.as_of AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
                                to_char(r.received_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))) AS row_hash
      FROM rows r WHERE r.problem IS NOT NULL) q;

-- On hand at T of every SKU at every source (the storefront after publish reads it too): the latest valid row at or
-- before T (as_of, then received_at), quarantined rows never count; with the safety stock of its source and SKU (the
-- largest of the rules that match: default, per source, per SKU, per source and SKU; joined, not looked up per row).
CREATE TABLE {stg}.on_hand AS
WITH latest AS (
    SELECT DISTINCT ON (s.sku, s.source_code) s.source_code, s.sku, s.quantity, s.as_of
    FROM landing.stock_levels s
    WHERE s.as_of <= %(t)s AND s.received_at <= %(t)s
      AND {stg}.stock_problem(s.source_code, s.sku, s.quantity, s.as_of) IS NULL   -- and so a source of a channel
    ORDER BY s.sku, s.source_code, s.as_of DESC, s.received_at DESC
),
ss_all AS (SELECT max(qty) AS qty FROM {stg}.safety_stock WHERE source_code = '*' AND sku = '*'),
ss_source AS (SELECT source_code, max(qty) AS qty FROM {stg}.safety_stock WHERE source_code <> '*' AND sku = '*'
              GROUP BY source_code),
ss_sku AS (SELECT sku, max(qty) AS qty FROM {stg}.safety_stock WHERE source_code = '*' AND sku <> '*' GROUP BY sku),
ss_pair AS (SELECT source_code, sku, max(qty) AS qty FROM {stg}.safety_stock WHERE source_code <> '*' AND sku <> '*'
            GROUP BY source_code, sku)
SELECT h.source_code, h.sku, h.quantity::bigint AS qty_on_hand, h.as_of,
       coalesce(greatest((SELECT qty FROM ss_all), f1.qty, f2.qty, f3.qty), 0)::bigint AS qty_safety
FROM latest h
LEFT JOIN ss_source f1 ON f1.source_code = h.source_code
LEFT JOIN ss_sku f2 ON f2.sku = h.sku
LEFT JOIN ss_pair f3 ON f3.source_code = h.source_code AND f3.sku = h.sku;
ANALYZE {stg}.on_hand;

