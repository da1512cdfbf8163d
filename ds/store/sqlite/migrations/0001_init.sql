-- mlsds schema, version 1. Times are Unix microseconds (UTC).
-- Group sequence numbers, epochs and counters are unsigned in Go and kept
-- below 2^63 here.

CREATE TABLE clients (
    id            TEXT    NOT NULL PRIMARY KEY,
    user_id       TEXT    NOT NULL,
    cipher_suite  INTEGER NOT NULL,
    signature_key BLOB    NOT NULL,
    created_at    INTEGER NOT NULL
) STRICT;
CREATE INDEX clients_by_user ON clients (user_id, id);

-- The KeyPackage directory. A claimed KeyPackage stays (claimed_at set) so
-- that a Welcome naming its ref can be routed to its owner.
CREATE TABLE key_packages (
    id           INTEGER NOT NULL PRIMARY KEY, -- upload order
    ref          BLOB    NOT NULL UNIQUE,
    client_id    TEXT    NOT NULL REFERENCES clients (id),
    cipher_suite INTEGER NOT NULL,
    data         BLOB    NOT NULL,
    not_before   INTEGER NOT NULL,
    not_after    INTEGER NOT NULL,
    last_resort  INTEGER NOT NULL,
    uploaded_at  INTEGER NOT NULL,
    claimed_by   TEXT,
    claimed_at   INTEGER,
    consumed_at  INTEGER
) STRICT;
CREATE INDEX key_packages_claimable ON key_packages (client_id, cipher_suite, last_resort, id)
    WHERE claimed_at IS NULL;
CREATE UNIQUE INDEX key_packages_one_last_resort ON key_packages (client_id, cipher_suite)
    WHERE last_resort = 1;

CREATE TABLE groups (
    id              BLOB    NOT NULL PRIMARY KEY,
    mode            INTEGER NOT NULL,
    cipher_suite    INTEGER NOT NULL,
    creator         TEXT    NOT NULL,
    created_at      INTEGER NOT NULL,
    epoch           INTEGER NOT NULL,
    epoch_start_seq INTEGER NOT NULL,
    last_seq        INTEGER NOT NULL,
    state_version   INTEGER NOT NULL,
    state           BLOB,
    group_info      BLOB
) STRICT;

-- Every message is stored once per group; recipients are derived from the
-- membership windows below.
CREATE TABLE messages (
    group_id     BLOB    NOT NULL REFERENCES groups (id),
    seq          INTEGER NOT NULL,
    epoch        INTEGER NOT NULL,
    content_type INTEGER NOT NULL,
    wire_format  INTEGER NOT NULL,
    sender       TEXT    NOT NULL,
    hash         BLOB    NOT NULL,
    data         BLOB    NOT NULL,
    accepted_at  INTEGER NOT NULL,
    PRIMARY KEY (group_id, seq)
) STRICT;
CREATE UNIQUE INDEX messages_by_hash ON messages (group_id, hash);

-- A client receives the group's messages with from_seq <= seq <= until_seq
-- (until_seq NULL while it is a member).
CREATE TABLE memberships (
    group_id  BLOB    NOT NULL REFERENCES groups (id),
    client_id TEXT    NOT NULL,
    from_seq  INTEGER NOT NULL,
    until_seq INTEGER,
    PRIMARY KEY (group_id, client_id, from_seq)
) STRICT;
CREATE UNIQUE INDEX memberships_open ON memberships (group_id, client_id) WHERE until_seq IS NULL;
CREATE INDEX memberships_by_client ON memberships (client_id, group_id);

CREATE TABLE cursors (
    client_id TEXT    NOT NULL,
    group_id  BLOB    NOT NULL REFERENCES groups (id),
    acked     INTEGER NOT NULL,
    PRIMARY KEY (client_id, group_id)
) STRICT;

CREATE TABLE welcomes (
    group_id    BLOB    NOT NULL,
    commit_seq  INTEGER NOT NULL,
    epoch       INTEGER NOT NULL, -- the epoch the joiners enter
    data        BLOB    NOT NULL,
    accepted_at INTEGER NOT NULL,
    PRIMARY KEY (group_id, commit_seq),
    FOREIGN KEY (group_id, commit_seq) REFERENCES messages (group_id, seq)
) STRICT;

CREATE TABLE welcome_routes (
    id              INTEGER NOT NULL PRIMARY KEY,
    client_id       TEXT    NOT NULL,
    group_id        BLOB    NOT NULL,
    commit_seq      INTEGER NOT NULL,
    key_package_ref BLOB    NOT NULL,
    delivered       INTEGER NOT NULL DEFAULT 0,
    UNIQUE (client_id, group_id, commit_seq),
    FOREIGN KEY (group_id, commit_seq) REFERENCES welcomes (group_id, commit_seq)
) STRICT;
CREATE INDEX welcome_routes_pending ON welcome_routes (client_id, id) WHERE delivered = 0;
