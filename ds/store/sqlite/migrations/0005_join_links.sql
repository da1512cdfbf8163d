-- mlsds schema, version 5: join links of transparent groups.
--
-- A join link lets whoever holds its token fetch a group's GroupInfo and
-- join it by external Commit until it expires. Only the SHA-256 of the
-- token is stored. Revoking deletes the row; expired rows of a group are
-- deleted when a new link of the group is created.

CREATE TABLE join_links (
    group_id   BLOB    NOT NULL REFERENCES groups (id),
    link_id    TEXT    NOT NULL,
    token_hash BLOB    NOT NULL UNIQUE,
    created_by TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (group_id, link_id)
) STRICT;
