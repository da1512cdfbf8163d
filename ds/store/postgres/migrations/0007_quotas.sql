-- mlsds schema, version 7 (PostgreSQL): daily quota counters.
--
-- One row per client and UTC day (days since 1970-01-01): the groups it
-- created and the bytes it had accepted that day. Nodes add to the bytes
-- in batches (one UPSERT per client per flush); groups are charged one at
-- a time against the quota, under the row's lock. Rows of days before
-- yesterday are deleted as new ones are written.
CREATE TABLE quota_usage (
    client_id      text COLLATE "C" NOT NULL,
    day            bigint           NOT NULL,
    groups_created bigint           NOT NULL DEFAULT 0,
    bytes_accepted bigint           NOT NULL DEFAULT 0,
    PRIMARY KEY (client_id, day)
);
CREATE INDEX quota_usage_by_day ON quota_usage (day);
