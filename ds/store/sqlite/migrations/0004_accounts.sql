-- mlsds schema, version 4: device links and single-use values.
--
-- A device link admits one more client to a user; only the SHA-256 of its
-- secret is stored. used_by is set in the transaction that registers the
-- client it admitted.
CREATE TABLE device_links (
    hash       BLOB    NOT NULL PRIMARY KEY,
    user_id    TEXT    NOT NULL,
    creator    TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at    INTEGER,
    used_by    TEXT
) STRICT;
CREATE INDEX device_links_by_creator ON device_links (creator, expires_at);
CREATE INDEX device_links_by_expiry ON device_links (expires_at);

-- Values that may be used once (challenge nonces, JWT ids), hashed, within
-- a scope, remembered until they expire.
CREATE TABLE used_once (
    scope      TEXT    NOT NULL,
    key        BLOB    NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (scope, key)
) STRICT, WITHOUT ROWID;
CREATE INDEX used_once_by_expiry ON used_once (expires_at);
