-- mlsds schema, version 12 (PostgreSQL): no change. Version 12 of the
-- SQLite schema changed what groups.last_seq means there; both engines keep
-- the same version numbers.
SELECT 1;
