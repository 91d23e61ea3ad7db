-- PostgreSQL partitions the mint records by day in this version (its migration 13). The embedded
-- database keeps one table and deletes expired rows: nothing changes here. Kept so that both
-- backends have the same migration versions.
SELECT 1;
