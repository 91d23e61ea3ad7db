-- Mint records partitioned by day (issue 24). At 10,000 mints a second the table takes 864
-- million rows a day; deleting them row by row past retention costs as much as writing them, and
-- every index grows with the retention window. Now `session_token_mints` is partitioned by range
-- of `issued_at`, one partition per UTC day (`session_token_mints_pYYYYMMDD`), which the service
-- creates ahead of time (store/partitions.rs) and drops whole once every token in it has been
-- expired for longer than `audit.retention_days`.
--
-- - The key includes the partition column: PRIMARY KEY (jti, issued_at). A jti is still unique:
--   jtis are UUIDv7 whose timestamp is the token's `iat`, the record's `issued_at`, so one jti
--   has one `issued_at`. A look-up by jti adds the day its UUIDv7 timestamp names and reads one
--   partition; a v4 jti (minted before this migration) is found in every partition's index.
-- - The existing table becomes the partition `session_token_mints_legacy`, from the beginning of
--   time to just after its newest record (the second after it); today's partition starts there.
--   Nothing is copied: attaching it builds the new primary key's index, and its other indexes are
--   adopted as they are. Retention keeps deleting its rows by the batch, and drops it once it is
--   empty. An empty table (a new database) is dropped instead.
-- - `session_token_mints_default` takes a record whose day has no partition (yet), so a missing
--   partition never fails a mint; the service moves such rows into the day's partition when it
--   creates it.
-- - Columns, CHECK and foreign-key constraints, indexes and triggers are carried over as the
--   table has them, whatever migrations added before this one.
--
-- Cost: building the new primary key's index dominates; measured 2.4 s per million records
-- (1,000,000 records made with generate_series, `psql -f` of this file, PostgreSQL 15 on this
-- project's 2-core machine shared with builds; `bash bench/partitions.sh migrate` repeats it). The
-- table is locked (ACCESS EXCLUSIVE) for that time: mints wait.
DO $migration$
DECLARE
    upper_bound TIMESTAMPTZ;
    index_defs  TEXT[];
    fk_defs     TEXT[];
    trigger_defs TEXT[];
    definition  TEXT;
    item        RECORD;
BEGIN
    -- What the table has, in its own name (before the rename).
    SELECT COALESCE(array_agg(pg_get_indexdef(i.indexrelid)), '{}') INTO index_defs
      FROM pg_index i
     WHERE i.indrelid = 'session_token_mints'::regclass AND NOT i.indisprimary;
    SELECT COALESCE(array_agg(format('ALTER TABLE session_token_mints ADD CONSTRAINT %I %s',
                                     c.conname, pg_get_constraintdef(c.oid))), '{}')
      INTO fk_defs
      FROM pg_constraint c
     WHERE c.conrelid = 'session_token_mints'::regclass AND c.contype = 'f';
    SELECT COALESCE(array_agg(pg_get_triggerdef(t.oid)), '{}') INTO trigger_defs
      FROM pg_trigger t
     WHERE t.tgrelid = 'session_token_mints'::regclass AND NOT t.tgisinternal;

    SELECT date_trunc('second', max(issued_at)) + INTERVAL '1 second'
      INTO upper_bound
      FROM session_token_mints;

    ALTER TABLE session_token_mints RENAME TO session_token_mints_legacy;
    -- Its triggers move to the partitioned table (a partition cannot keep a trigger with a
    -- transition table); its indexes and constraints get names of their own.
    FOR item IN SELECT t.tgname FROM pg_trigger t
                 WHERE t.tgrelid = 'session_token_mints_legacy'::regclass AND NOT t.tgisinternal
    LOOP
        EXECUTE format('DROP TRIGGER %I ON session_token_mints_legacy', item.tgname);
    END LOOP;
    ALTER TABLE session_token_mints_legacy DROP CONSTRAINT session_token_mints_pkey;
    FOR item IN SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
                 WHERE i.indrelid = 'session_token_mints_legacy'::regclass
    LOOP
        EXECUTE format('ALTER INDEX %I RENAME TO %I', item.relname,
                       left('legacy_' || item.relname, 63));
    END LOOP;

    CREATE TABLE session_token_mints (
        LIKE session_token_mints_legacy INCLUDING DEFAULTS INCLUDING CONSTRAINTS,
        PRIMARY KEY (jti, issued_at)
    ) PARTITION BY RANGE (issued_at);
    -- On the empty parent these are instant; attaching adopts the legacy table's equal indexes.
    FOREACH definition IN ARRAY index_defs LOOP
        EXECUTE definition;
    END LOOP;
    IF upper_bound IS NULL THEN
        DROP TABLE session_token_mints_legacy;
    ELSE
        EXECUTE format('ALTER TABLE session_token_mints ATTACH PARTITION session_token_mints_legacy
                        FOR VALUES FROM (MINVALUE) TO (%L)', upper_bound);
    END IF;
    CREATE TABLE session_token_mints_default PARTITION OF session_token_mints DEFAULT;
    -- The legacy table's foreign keys are adopted (not validated again).
    FOREACH definition IN ARRAY fk_defs LOOP
        EXECUTE definition;
    END LOOP;
    FOREACH definition IN ARRAY trigger_defs LOOP
        EXECUTE definition;
    END LOOP;
END;
$migration$;
