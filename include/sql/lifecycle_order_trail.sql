-- The FTC and cancellation trail on oms.orders, recomputed at T from the events (oms.delay_notices,
-- oms.line_cancellations of kinds CUSTOMER, FTC, AUTO_CANCEL) for every order that has such an event or still shows a
-- trail (so that a rewind followed by the re-run gives the same values). updated_at is left to refresh_lines.
WITH canc AS (
    SELECT order_id,
           (array_agg(reason ORDER BY run_at DESC, kind))[1] AS cancel_reason,
           max(refund_due_at) AS refund_due_at,
           bool_or(kind = 'CUSTOMER') AS by_buyer,
           bool_or(kind IN ('FTC', 'AUTO_CANCEL')) AS by_rule
    FROM oms.line_cancellations
    WHERE kind IN ('CUSTOMER', 'FTC', 'AUTO_CANCEL')
    GROUP BY order_id
),
keys AS (
    SELECT order_id FROM oms.ftc_deadlines
    UNION SELECT order_id FROM canc
    UNION SELECT order_id FROM oms.orders WHERE ftc_status IS NOT NULL   -- set whenever any trail column is
),
trail AS (
    SELECT k.order_id,
           CASE WHEN c.by_buyer THEN 'CANCELLED_BY_BUYER'
                WHEN c.by_rule THEN 'CANCELLED'
                WHEN d.notice_kind IS NULL THEN NULL
                WHEN d.consent <> 'NONE' THEN 'CONSENT_' || d.consent
                WHEN d.notice_kind = 'RENEWED' THEN 'RENEWED_NOTICE_SENT'
                ELSE 'NOTICE_SENT' END AS ftc_status,
           d.revised_ship_by, d.consent, c.cancel_reason, c.refund_due_at
    FROM keys k
    LEFT JOIN oms.ftc_deadlines d USING (order_id)
    LEFT JOIN canc c USING (order_id)
)
UPDATE oms.orders o SET ftc_status = t.ftc_status, revised_ship_by = t.revised_ship_by, consent = t.consent,
                        cancel_reason = t.cancel_reason, refund_due_at = t.refund_due_at
FROM trail t
WHERE o.order_id = t.order_id
  AND (o.ftc_status, o.revised_ship_by, o.consent, o.cancel_reason, o.refund_due_at)
      IS DISTINCT FROM (t.ftc_status, t.revised_ship_by, t.consent, t.cancel_reason, t.refund_due_at);
