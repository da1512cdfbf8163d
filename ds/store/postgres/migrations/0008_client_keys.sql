-- mlsds schema, version 8 (PostgreSQL): several signature keys per client.
--
-- client_keys holds every signature key a client may use (RFC 9750 §5):
-- the one it registered with and those it added since (AddSignatureKey),
-- in the order they came (id). clients.signature_key stays the client's
-- first key still held. Every client has at least one row: the existing
-- clients' keys are copied here, and the trigger adds the key of every
-- client registered from now on, whichever statement inserts it. Deleting
-- a client deletes its keys (the engines do so explicitly; the cascade is
-- the safety net).
CREATE TABLE client_keys (
    id            bigserial PRIMARY KEY,
    client_id     text COLLATE "C" NOT NULL REFERENCES clients (id) ON DELETE CASCADE,
    signature_key bytea       NOT NULL,
    added_at      timestamptz,
    UNIQUE (client_id, signature_key)
);

INSERT INTO client_keys (client_id, signature_key, added_at)
    SELECT id, signature_key, created_at FROM clients ORDER BY created_at, id;

CREATE FUNCTION client_keys_on_register() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO client_keys (client_id, signature_key, added_at)
        VALUES (NEW.id, NEW.signature_key, NEW.created_at);
    RETURN NEW;
END;
$$;

CREATE TRIGGER client_keys_on_register AFTER INSERT ON clients
    FOR EACH ROW EXECUTE FUNCTION client_keys_on_register();
