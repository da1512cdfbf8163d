-- mlsds schema, version 11 (PostgreSQL): the successor of a group that a
-- committed ReInit closed (RFC 9420 §11.2, ds/successor.go).
--
-- CreateGroup with a predecessor stores the link here in the transaction
-- that creates the successor. A group has at most one successor (the
-- primary key), which members of the old group read with its GroupInfo.
-- deleteGroupTx removes the row of a deleted predecessor.
CREATE TABLE group_successors (
    group_id     bytea       NOT NULL PRIMARY KEY, -- the predecessor
    successor_id bytea       NOT NULL,
    linked_at    timestamptz NOT NULL
);
