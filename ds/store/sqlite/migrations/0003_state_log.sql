-- mlsds schema, version 3: the state of a transparent group is a snapshot
-- plus a log.
--
-- Every message that changed a transparent group's state (its Proposals
-- and Commits) carries the StateVersion it produced, so that the messages
-- after a snapshot, in state_version order, rebuild the current state. The
-- snapshot lives in its own table, written now and then, so that the
-- group's head row stays small: SQLite rewrites a whole row on UPDATE.

CREATE TABLE group_snapshots (
    group_id      BLOB    NOT NULL PRIMARY KEY REFERENCES groups (id),
    state_version INTEGER NOT NULL,
    state         BLOB    NOT NULL
) STRICT;

INSERT INTO group_snapshots (group_id, state_version, state)
    SELECT id, state_version, state FROM groups WHERE state IS NOT NULL;
UPDATE groups SET state = NULL WHERE state IS NOT NULL;

-- NULL for messages that changed no state, and for those accepted before
-- this version (the migrated snapshots cover them).
ALTER TABLE messages ADD COLUMN state_version INTEGER;
CREATE UNIQUE INDEX messages_state_log ON messages (group_id, state_version)
    WHERE state_version IS NOT NULL;
