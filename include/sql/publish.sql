-- Publish run T from its staging schema {stg} (called inside one transaction together with refresh_lines and exceptions).
-- The new shipment requests' numbers ({stg}.new_shipments) and the lines the run touches ({stg}.touched) were prepared
-- before, beside the allocation gate (prepare_publish.sql): here the run's rows are only written.
-- New orders go to oms.orders, and their documents (params.order as received) to oms.order_documents.
-- Rows are inserted in key order: each index and each reference lookup then walks its pages in order rather than at
-- random (a quarter less time for the attempts at 200k lines, more as the tables outgrow the cache).
--
-- Foreign keys, set-based: every INSERT below that has a foreign key returns its keys, and the same statement counts
-- those whose referenced row is missing into {stg}.publish_orphans (cycle.publish raises, naming one, when any is, and
-- the transaction is rolled back). When set_based_references is true (cycle.publish decides: the role may set
-- session_replication_role and no trigger or rule of ours or anyone's is on these tables), PostgreSQL's row-by-row
-- foreign-key triggers are switched off for these inserts: one lookup per row for each reference, with a row lock on
-- the referenced row, cost more than the inserts themselves (2.4 of 4.7 s at 200k lines). The declared constraints
-- stay and guard every other writer; here the set-based count checks exactly the rows the triggers would have.
INSERT INTO oms.orders SELECT * FROM {stg}.new_orders;
INSERT INTO oms.quarantine SELECT * FROM {stg}.quarantine;
INSERT INTO oms.consumed_messages SELECT * FROM {stg}.consumed;

-- shipments handed to the carrier
UPDATE oms.shipment_requests r
SET status = 'SHIPPED', shipped_at = c.shipped_at, shipped_run_at = %(t)s
FROM {stg}.confirmations c
WHERE r.shipment_request_id = c.shipment_request_id;

-- the inserts with foreign keys (the tables of cycle.REFERENCING_TABLES, and nothing else, between the two set_config)
CREATE TABLE {stg}.publish_orphans (reference text, orphans bigint, example text);
SELECT set_config('session_replication_role', 'replica', true) WHERE %(set_based_references)s;

WITH ins AS (INSERT INTO oms.order_documents SELECT * FROM {stg}.new_order_documents ORDER BY order_id
             RETURNING order_id)
INSERT INTO {stg}.publish_orphans
SELECT 'order_documents -> orders', count(*), min(order_id) FROM ins
WHERE NOT EXISTS (SELECT 1 FROM oms.orders o WHERE o.order_id = ins.order_id);

WITH ins AS (INSERT INTO oms.order_lines SELECT * FROM {stg}.new_lines RETURNING order_id)
INSERT INTO {stg}.publish_orphans
SELECT 'order_lines -> orders', count(*), min(order_id) FROM ins
WHERE NOT EXISTS (SELECT 1 FROM oms.orders o WHERE o.order_id = ins.order_id);

WITH ins AS (
    INSERT INTO oms.shipment_requests (shipment_request_id, order_id, source_code, shipment_number, requested_at, status)
    SELECT 'SR-' || order_id || '-' || shipment_number, order_id, source_code, shipment_number, %(t)s, 'REQUESTED'
    FROM {stg}.new_shipments
    ORDER BY 1
    RETURNING order_id)
INSERT INTO {stg}.publish_orphans
SELECT 'shipment_requests -> orders', count(*), min(order_id) FROM ins
WHERE NOT EXISTS (SELECT 1 FROM oms.orders o WHERE o.order_id = ins.order_id);

WITH ins AS (
    INSERT INTO oms.shipment_request_lines (shipment_request_id, order_id, line_id, sku, quantity)
    SELECT 'SR-' || s.order_id || '-' || s.shipment_number, a.order_id, a.line_id, a.sku, a.qty
    FROM {stg}.allocations a JOIN {stg}.new_shipments s USING (order_id, source_code)
    ORDER BY 1, a.line_id
    RETURNING shipment_request_id, order_id, line_id)
INSERT INTO {stg}.publish_orphans
SELECT 'shipment_request_lines -> shipment_requests', count(*), min(shipment_request_id) FROM ins
WHERE NOT EXISTS (SELECT 1 FROM oms.shipment_requests r WHERE r.shipment_request_id = ins.shipment_request_id)
UNION ALL
SELECT 'shipment_request_lines -> order_lines', count(*), min(order_id || ' line ' || line_id) FROM ins
WHERE NOT EXISTS (SELECT 1 FROM oms.order_lines l WHERE l.order_id = ins.order_id AND l.line_id = ins.line_id);

-- cancellations: quantity not backorderable (the allocation), and those decided at T before allocation
-- (lifecycle.stage_cancellations: buyer, FTC, automatic)
WITH ins AS (
    INSERT INTO oms.line_cancellations (order_id, line_id, run_at, quantity, kind, reason, refund_due_at)
    SELECT order_id, line_id, %(t)s, qty_cancelled, 'NOT_BACKORDERABLE',
           coalesce(nullif(reason, ''), 'not backorderable'), NULL::timestamptz
    FROM {stg}.line_results WHERE qty_cancelled > 0
    UNION ALL
    SELECT order_id, line_id, %(t)s, qty, kind, reason, refund_due_at FROM {stg}.cancellations
    ORDER BY 1, 2, 5
    RETURNING order_id, line_id)
INSERT INTO {stg}.publish_orphans
SELECT 'line_cancellations -> order_lines', count(*), min(order_id || ' line ' || line_id) FROM ins
WHERE NOT EXISTS (SELECT 1 FROM oms.order_lines l WHERE l.order_id = ins.order_id AND l.line_id = ins.line_id);

-- the attempts log: every line that waited before this run, and every new line not allocated in full at once
WITH ins AS (
    INSERT INTO oms.backorder_attempts (order_id, line_id, checked_at, qty_needed, qty_available, qty_allocated,
                                        qty_backordered, qty_held, qty_cancelled, outcome, reason)
    SELECT r.order_id, r.line_id, %(t)s, d.qty_open, r.qty_available_seen, r.qty_allocated, r.qty_backordered,
           r.qty_held, r.qty_cancelled, r.outcome, nullif(r.reason, '')
    FROM {stg}.line_results r JOIN {stg}.demand d USING (order_id, line_id)
    WHERE NOT (d.is_new AND r.qty_allocated = d.qty_open)
    ORDER BY r.order_id, r.line_id
    RETURNING order_id, line_id)
INSERT INTO {stg}.publish_orphans
SELECT 'backorder_attempts -> order_lines', count(*), min(order_id || ' line ' || line_id) FROM ins
WHERE NOT EXISTS (SELECT 1 FROM oms.order_lines l WHERE l.order_id = ins.order_id AND l.line_id = ins.line_id);

SELECT set_config('session_replication_role', 'origin', true) WHERE %(set_based_references)s;
