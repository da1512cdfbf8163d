-- mlsds schema, version 1 (PostgreSQL).
--
-- Identifiers that Go compares and sorts byte-wise (client and user ids)
-- use the "C" collation, whatever the database's default, so that ORDER BY
-- agrees with the other engines. Times are timestamptz (microseconds).
-- Group sequence numbers, epochs and counters are unsigned in Go and kept
-- below 2^63 here.

CREATE TABLE clients (
    id            text COLLATE "C" NOT NULL PRIMARY KEY,
    user_id       text COLLATE "C" NOT NULL,
    cipher_suite  integer     NOT NULL,
    signature_key bytea       NOT NULL,
    created_at    timestamptz
);
CREATE INDEX clients_by_user ON clients (user_id, id);

-- The KeyPackage directory. A claimed KeyPackage stays (claimed_at set) so
-- that a Welcome naming its ref can be routed to its owner. id gives the
-- upload order.
CREATE TABLE key_packages (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ref          bytea       NOT NULL UNIQUE,
    client_id    text COLLATE "C" NOT NULL REFERENCES clients (id),
    cipher_suite integer     NOT NULL,
    data         bytea       NOT NULL,
    not_before   timestamptz NOT NULL,
    not_after    timestamptz NOT NULL,
    last_resort  boolean     NOT NULL,
    uploaded_at  timestamptz NOT NULL,
    claimed_by   text COLLATE "C",
    claimed_at   timestamptz,
    consumed_at  timestamptz
);
CREATE INDEX key_packages_claimable ON key_packages (client_id, cipher_suite, id)
    WHERE claimed_at IS NULL AND NOT last_resort;
CREATE INDEX key_packages_unclaimed ON key_packages (client_id, id)
    WHERE claimed_at IS NULL;
CREATE UNIQUE INDEX key_packages_one_last_resort ON key_packages (client_id, cipher_suite)
    WHERE last_resort;

-- The group row is updated by every accepted message (last_seq) and locked
-- by AcceptMessage: room for HOT updates keeps that cheap.
CREATE TABLE groups (
    id              bytea       NOT NULL PRIMARY KEY,
    mode            integer     NOT NULL,
    cipher_suite    integer     NOT NULL,
    creator         text COLLATE "C" NOT NULL,
    created_at      timestamptz,
    epoch           bigint      NOT NULL CHECK (epoch >= 0),
    epoch_start_seq bigint      NOT NULL,
    last_seq        bigint      NOT NULL,
    state_version   bigint      NOT NULL,
    state           bytea,
    group_info      bytea
) WITH (fillfactor = 70);

-- Every message is stored once per group; recipients are derived from the
-- membership windows below.
CREATE TABLE messages (
    group_id     bytea       NOT NULL REFERENCES groups (id),
    seq          bigint      NOT NULL,
    epoch        bigint      NOT NULL,
    content_type integer     NOT NULL,
    wire_format  integer     NOT NULL,
    sender       text COLLATE "C" NOT NULL,
    hash         bytea       NOT NULL,
    data         bytea       NOT NULL,
    accepted_at  timestamptz NOT NULL,
    PRIMARY KEY (group_id, seq)
);
CREATE UNIQUE INDEX messages_by_hash ON messages (group_id, hash);

-- A client receives the group's messages with from_seq <= seq <= until_seq
-- (until_seq NULL while it is a member).
CREATE TABLE memberships (
    group_id  bytea  NOT NULL REFERENCES groups (id),
    client_id text COLLATE "C" NOT NULL,
    from_seq  bigint NOT NULL,
    until_seq bigint,
    PRIMARY KEY (group_id, client_id, from_seq)
);
CREATE UNIQUE INDEX memberships_open ON memberships (group_id, client_id) WHERE until_seq IS NULL;
CREATE INDEX memberships_by_client ON memberships (client_id, group_id);

CREATE TABLE cursors (
    client_id text COLLATE "C" NOT NULL,
    group_id  bytea  NOT NULL REFERENCES groups (id),
    acked     bigint NOT NULL,
    PRIMARY KEY (client_id, group_id)
);

CREATE TABLE welcomes (
    group_id    bytea       NOT NULL,
    commit_seq  bigint      NOT NULL,
    epoch       bigint      NOT NULL, -- the epoch the joiners enter
    data        bytea       NOT NULL,
    accepted_at timestamptz NOT NULL,
    PRIMARY KEY (group_id, commit_seq),
    FOREIGN KEY (group_id, commit_seq) REFERENCES messages (group_id, seq)
);

CREATE TABLE welcome_routes (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    client_id       text COLLATE "C" NOT NULL,
    group_id        bytea   NOT NULL,
    commit_seq      bigint  NOT NULL,
    key_package_ref bytea   NOT NULL,
    delivered       boolean NOT NULL DEFAULT false,
    UNIQUE (client_id, group_id, commit_seq),
    FOREIGN KEY (group_id, commit_seq) REFERENCES welcomes (group_id, commit_seq)
);
CREATE INDEX welcome_routes_pending ON welcome_routes (client_id, id) WHERE NOT delivered;
