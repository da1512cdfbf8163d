-- mlsds schema, version 3 (PostgreSQL): the state of a transparent group is
-- a snapshot plus a log.
--
-- Every message that changed a transparent group's state (its Proposals
-- and Commits) carries the StateVersion it produced, so that the messages
-- after a snapshot, in state_version order, rebuild the current state. The
-- snapshot lives in its own table, written now and then, so that updates
-- of the group's head row never copy it.

CREATE TABLE group_snapshots (
    group_id      bytea  NOT NULL PRIMARY KEY REFERENCES groups (id),
    state_version bigint NOT NULL CHECK (state_version >= 0),
    state         bytea  NOT NULL
);
-- Keys and signatures do not compress: store the state out of line as is.
ALTER TABLE group_snapshots ALTER COLUMN state SET STORAGE EXTERNAL;

INSERT INTO group_snapshots (group_id, state_version, state)
    SELECT id, state_version, state FROM groups WHERE state IS NOT NULL;
UPDATE groups SET state = NULL WHERE state IS NOT NULL;

-- NULL for messages that changed no state, and for those accepted before
-- this version (the migrated snapshots cover them).
ALTER TABLE messages ADD COLUMN state_version bigint;
CREATE UNIQUE INDEX messages_state_log ON messages (group_id, state_version)
    WHERE state_version IS NOT NULL;
