-- Dead-lettered outbox rows (an event the bus can never take, or one a
-- subscriber failed max_deliver times) stay with their error but are never
-- claimed again. Claims walk pending rows in outbox order.
ALTER TABLE outbox ADD COLUMN dead_at BIGINT;
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (seq) WHERE published_at IS NULL AND dead_at IS NULL;
CREATE INDEX IF NOT EXISTS outbox_published ON outbox (published_at) WHERE published_at IS NOT NULL;
