-- The Idempotency-Key the order was placed with: a retry that outlives the
-- idempotency middleware's record (a crash mid-request) finds the order
-- instead of placing it twice.
ALTER TABLE orders ADD COLUMN idempotency_key TEXT;
CREATE UNIQUE INDEX IF NOT EXISTS orders_customer_idempotency_key ON orders (customer_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
