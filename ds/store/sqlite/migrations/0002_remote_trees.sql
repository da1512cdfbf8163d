-- mlsds schema, version 2: remote trees of opaque groups.
--
-- A remote tree is an epoch's GroupInfo and ratchet tree, encrypted by a
-- member; the store keeps the blob as given. Only the group's current and
-- previous epoch are kept: writes delete older rows in their transaction.

CREATE TABLE remote_trees (
    group_id  BLOB    NOT NULL REFERENCES groups (id),
    epoch     INTEGER NOT NULL,
    blob      BLOB    NOT NULL,
    sender    TEXT    NOT NULL, -- the member that uploaded it
    stored_at INTEGER NOT NULL,
    PRIMARY KEY (group_id, epoch)
) STRICT;
