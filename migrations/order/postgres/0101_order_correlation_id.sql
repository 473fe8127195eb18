-- The correlation id of the request that placed the order: events the
-- recovery worker causes later carry it too.
ALTER TABLE orders ADD COLUMN correlation_id TEXT;
