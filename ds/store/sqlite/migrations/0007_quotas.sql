-- mlsds schema, version 7: daily quota counters.
--
-- One row per client and UTC day (days since 1970-01-01): the groups it
-- created and the bytes it had accepted that day. Nodes add to the bytes
-- in batches (one UPSERT per client per flush); groups are charged one at
-- a time against the quota. Rows of days before yesterday are deleted as
-- new ones are written.
CREATE TABLE quota_usage (
    client_id      TEXT    NOT NULL,
    day            INTEGER NOT NULL,
    groups_created INTEGER NOT NULL DEFAULT 0,
    bytes_accepted INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (client_id, day)
) STRICT, WITHOUT ROWID;
CREATE INDEX quota_usage_by_day ON quota_usage (day);
