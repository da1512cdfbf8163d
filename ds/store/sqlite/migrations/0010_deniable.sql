-- mlsds schema, version 10: deniable groups (ds/deniable.go).
--
-- A deniable group's members prove membership by a MAC under the key of
-- an epoch, which the Delivery Service keeps here: K_e of the group's
-- first epoch from its creation, K_{e+1} from each Commit, written in the
-- transaction that accepts it. start_seq is the GroupSeq of the Commit
-- that started the epoch (1 for the first); superseded_at is set when the
-- next Commit is accepted, and the pruner deletes a key once it was
-- superseded longer ago than the retention. The current key stays.
CREATE TABLE membership_keys (
    group_id      BLOB    NOT NULL REFERENCES groups (id),
    epoch         INTEGER NOT NULL,
    key           BLOB    NOT NULL,
    start_seq     INTEGER NOT NULL,
    created_at    INTEGER NOT NULL,
    superseded_at INTEGER,
    PRIMARY KEY (group_id, epoch)
) STRICT;
CREATE INDEX membership_keys_superseded ON membership_keys (superseded_at) WHERE superseded_at IS NOT NULL;

-- A deniable group's Welcome is stored under each KeyPackageRef it names,
-- and nothing else: no group id, no client, no Commit. Its joiner finds it
-- through the KeyPackages it published, and deletes it when it took it
-- in; expires_at (rounded up to the hour) bounds how long it stays.
CREATE TABLE deniable_welcomes (
    id         INTEGER NOT NULL PRIMARY KEY,
    ref        BLOB    NOT NULL, -- a last-resort KeyPackage may be named by several
    epoch      INTEGER NOT NULL, -- the epoch the joiner enters
    data       BLOB    NOT NULL,
    expires_at INTEGER NOT NULL
) STRICT;
CREATE INDEX deniable_welcomes_by_ref ON deniable_welcomes (ref);
CREATE INDEX deniable_welcomes_by_expiry ON deniable_welcomes (expires_at);
