-- mlsds schema, version 9: a Welcome that comes with a group's creation.
--
-- CreateGroup may carry a Welcome for the members that the creator added
-- before it created the group here (an MLS library that exports only the
-- GroupInfo after its first Commit). It is stored with commit_seq 0,
-- which no message has: the joiners' messages start at 1. So welcomes no
-- longer references messages; a Welcome with commit_seq > 0 still belongs
-- to the Commit of that seq, and pruning keeps that Commit while the
-- Welcome is stored, as before.
--
-- SQLite cannot drop a foreign key in place: both tables are rebuilt
-- (routes first out, welcomes last in), with their rows and indexes.
CREATE TABLE welcomes_v9 (
    group_id    BLOB    NOT NULL,
    commit_seq  INTEGER NOT NULL,
    epoch       INTEGER NOT NULL, -- the epoch the joiners enter
    data        BLOB    NOT NULL,
    accepted_at INTEGER NOT NULL,
    PRIMARY KEY (group_id, commit_seq)
) STRICT;
INSERT INTO welcomes_v9 (group_id, commit_seq, epoch, data, accepted_at)
    SELECT group_id, commit_seq, epoch, data, accepted_at FROM welcomes;

CREATE TABLE welcome_routes_v9 (
    id              INTEGER NOT NULL PRIMARY KEY,
    client_id       TEXT    NOT NULL,
    group_id        BLOB    NOT NULL,
    commit_seq      INTEGER NOT NULL,
    key_package_ref BLOB    NOT NULL,
    delivered       INTEGER NOT NULL DEFAULT 0,
    UNIQUE (client_id, group_id, commit_seq),
    FOREIGN KEY (group_id, commit_seq) REFERENCES welcomes_v9 (group_id, commit_seq)
) STRICT;
INSERT INTO welcome_routes_v9 (id, client_id, group_id, commit_seq, key_package_ref, delivered)
    SELECT id, client_id, group_id, commit_seq, key_package_ref, delivered FROM welcome_routes;

DROP TABLE welcome_routes;
DROP TABLE welcomes;
-- Renaming welcomes_v9 also renames it in welcome_routes_v9's foreign key.
ALTER TABLE welcomes_v9 RENAME TO welcomes;
ALTER TABLE welcome_routes_v9 RENAME TO welcome_routes;
CREATE INDEX welcome_routes_pending ON welcome_routes (client_id, id) WHERE delivered = 0;
CREATE INDEX welcome_routes_by_welcome ON welcome_routes (group_id, commit_seq);
