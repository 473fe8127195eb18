-- Which instance holds an order's lease (several may serve one database):
-- only the holder renews, releases, or finishes a saga step under it.
ALTER TABLE orders ADD COLUMN lease_owner TEXT;
