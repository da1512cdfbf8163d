-- mlsds schema, version 5: join links of transparent groups.
--
-- A join link lets whoever holds its token fetch a group's GroupInfo and
-- join it by external Commit until it expires. Only the SHA-256 of the
-- token is stored. Revoking deletes the row; expired rows of a group are
-- deleted when a new link of the group is created, under the group's row
-- lock.

CREATE TABLE join_links (
    group_id   bytea       NOT NULL REFERENCES groups (id),
    link_id    text COLLATE "C" NOT NULL,
    token_hash bytea       NOT NULL,
    created_by text COLLATE "C" NOT NULL,
    created_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (group_id, link_id),
    CONSTRAINT join_links_token_hash UNIQUE (token_hash)
);
