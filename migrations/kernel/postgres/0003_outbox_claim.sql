-- A relay's claim in one round trip: take the claim lock (transaction-level,
-- so it is held until the calling statement's implicit transaction ends) and,
-- only if it was free, claim the due rows head of line. The function is
-- VOLATILE, so the UPDATE takes its snapshot after the lock is held and sees
-- the previous holder's committed claim, as a separate statement after
-- `SELECT pg_try_advisory_xact_lock` inside BEGIN/COMMIT did (four round trips).
CREATE OR REPLACE FUNCTION outbox_claim(p_lock BIGINT, p_until BIGINT, p_now BIGINT, p_limit BIGINT)
RETURNS TABLE (claimed_envelope TEXT, claimed_attempts BIGINT)
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF NOT pg_try_advisory_xact_lock(p_lock) THEN
        RETURN;
    END IF;
    RETURN QUERY
    UPDATE outbox SET available_at = p_until, attempts = outbox.attempts + 1
    WHERE seq IN (SELECT o.seq FROM outbox o
        WHERE o.published_at IS NULL AND o.dead_at IS NULL AND o.available_at <= p_now
        AND o.seq < COALESCE((SELECT MIN(p.seq) FROM outbox p
             WHERE p.published_at IS NULL AND p.dead_at IS NULL AND p.available_at > p_now),
             9223372036854775807)
        ORDER BY o.seq LIMIT p_limit)
    RETURNING outbox.envelope, outbox.attempts;
END
$$;
