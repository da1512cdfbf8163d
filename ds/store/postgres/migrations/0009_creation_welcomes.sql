-- mlsds schema, version 9: a Welcome that comes with a group's creation.
--
-- CreateGroup may carry a Welcome for the members that the creator added
-- before it created the group here (an MLS library that exports only the
-- GroupInfo after its first Commit). It is stored with commit_seq 0,
-- which no message has: the joiners' messages start at 1. So welcomes no
-- longer references messages; a Welcome with commit_seq > 0 still belongs
-- to the Commit of that seq, and pruning keeps that Commit while the
-- Welcome is stored, as before.
ALTER TABLE welcomes DROP CONSTRAINT welcomes_group_id_commit_seq_fkey;
