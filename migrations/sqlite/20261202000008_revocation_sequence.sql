-- The revocation feed's cursor (issue 20, item 1). `revoked_at` is taken when the revoking
-- statement starts, not when it commits, so a feed paged by it could lose a revocation that
-- commits after a verifier polled past its time. Each revoked row now carries `revoked_seq`, a
-- number from the counter below, taken by the triggers inside the revoking transaction. SQLite
-- has one writer at a time, so these numbers are in commit order: a revocation not handed out
-- yet always sorts after the feed's cursor (revoked_seq, jti). The counter is its own row, so
-- pruning old mint records never hands a number out twice. Rows revoked before this migration
-- get 0.
CREATE TABLE revocation_counter (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    value INTEGER NOT NULL
);
INSERT INTO revocation_counter (id, value) VALUES (1, 0);

ALTER TABLE session_token_mints ADD COLUMN revoked_seq INTEGER;
UPDATE session_token_mints SET revoked_seq = 0 WHERE revoked_at IS NOT NULL;

CREATE TRIGGER session_token_mints_revoked_seq_update AFTER UPDATE OF revoked_at ON session_token_mints
    FOR EACH ROW WHEN OLD.revoked_at IS NULL AND NEW.revoked_at IS NOT NULL
BEGIN
    UPDATE revocation_counter SET value = value + 1 WHERE id = 1;
    UPDATE session_token_mints SET revoked_seq = (SELECT value FROM revocation_counter WHERE id = 1)
        WHERE jti = NEW.jti;
END;
CREATE TRIGGER session_token_mints_revoked_seq_insert AFTER INSERT ON session_token_mints
    FOR EACH ROW WHEN NEW.revoked_at IS NOT NULL
BEGIN
    UPDATE revocation_counter SET value = value + 1 WHERE id = 1;
    UPDATE session_token_mints SET revoked_seq = (SELECT value FROM revocation_counter WHERE id = 1)
        WHERE jti = NEW.jti;
END;

-- The feed's index: revoked rows only, in the feed's order.
CREATE INDEX session_token_mints_revoked_seq_idx ON session_token_mints (revoked_seq, jti)
    WHERE revoked_seq IS NOT NULL;
