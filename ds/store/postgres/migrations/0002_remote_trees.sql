-- mlsds schema, version 2 (PostgreSQL): remote trees of opaque groups.
--
-- A remote tree is an epoch's GroupInfo and ratchet tree, encrypted by a
-- member; the store keeps the blob as given. Only the group's current and
-- previous epoch are kept: writes delete older rows in their transaction,
-- under the group's row lock.

CREATE TABLE remote_trees (
    group_id  bytea       NOT NULL REFERENCES groups (id),
    epoch     bigint      NOT NULL CHECK (epoch >= 0),
    blob      bytea       NOT NULL,
    sender    text COLLATE "C" NOT NULL, -- the member that uploaded it
    stored_at timestamptz NOT NULL,
    PRIMARY KEY (group_id, epoch)
);
