-- The inbox forgets events handled more than its retention ago (an hourly
-- DELETE by handled_at, agora_kernel::inbox::RETENTION): index it.
CREATE INDEX IF NOT EXISTS inbox_handled_at ON inbox (handled_at);
