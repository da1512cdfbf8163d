-- mlsds schema, version 4 (PostgreSQL): device links and single-use values.
--
-- A device link admits one more client to a user; only the SHA-256 of its
-- secret is stored. used_by is set in the transaction that registers the
-- client it admitted.
CREATE TABLE device_links (
    hash       bytea            NOT NULL PRIMARY KEY,
    user_id    text COLLATE "C" NOT NULL,
    creator    text COLLATE "C" NOT NULL,
    created_at timestamptz      NOT NULL,
    expires_at timestamptz      NOT NULL,
    used_at    timestamptz,
    used_by    text COLLATE "C"
);
CREATE INDEX device_links_by_creator ON device_links (creator, expires_at);
CREATE INDEX device_links_by_expiry ON device_links (expires_at);

-- Values that may be used once (challenge nonces, JWT ids), hashed, within
-- a scope, remembered until they expire.
CREATE TABLE used_once (
    scope      text COLLATE "C" NOT NULL,
    key        bytea            NOT NULL,
    expires_at timestamptz      NOT NULL,
    PRIMARY KEY (scope, key)
);
CREATE INDEX used_once_by_expiry ON used_once (expires_at);
