-- Shipment confirmations that run T applies: received at or before T, for requests still REQUESTED.
CREATE TABLE {stg}.confirmations AS
SELECT DISTINCT ON (c.shipment_request_id) c.shipment_request_id, c.shipped_at
FROM landing.shipment_confirmations c
JOIN oms.shipment_requests r ON r.shipment_request_id = c.shipment_request_id AND r.status = 'REQUESTED'
WHERE c.received_at <= %(t)s
ORDER BY c.shipment_request_id, c.shipped_at, c.received_at;
