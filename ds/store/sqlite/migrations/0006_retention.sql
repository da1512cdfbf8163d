-- mlsds schema, version 6: retention.
--
-- pruned_seq is a group's watermark: every message up to it may have been
-- deleted (acknowledged by every recipient, or older than the retention).
-- A client asking for messages at or below it learns that they are gone.
ALTER TABLE groups ADD COLUMN pruned_seq INTEGER NOT NULL DEFAULT 0;

-- Expired KeyPackages are deleted in order of expiry.
CREATE INDEX key_packages_by_expiry ON key_packages (not_after);

-- A Welcome is deleted once no route names it.
CREATE INDEX welcome_routes_by_welcome ON welcome_routes (group_id, commit_seq);
