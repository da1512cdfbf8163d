-- mlsds schema, version 12: groups.last_seq becomes a floor of the group's
-- head. An accept batch no longer rewrites a group's row for its
-- application messages: the head is MAX(last_seq, the group's last stored
-- message) (lastSeq, groups.go); Commits, pruning, deletion and Close write
-- the column. The tables are unchanged. The version moves so that an mlsds
-- from before, which takes last_seq for the head, refuses this database
-- ("newer than this mlsds knows") instead of handing out a sequence number
-- twice.
SELECT 1;
