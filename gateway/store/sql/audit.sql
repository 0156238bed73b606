-- The audit log: appended one entry at a time under one lock, read back in pages or whole.

-- name: lock_audit_chain
-- Serialise the writers of the chain, in every process, until the transaction ends.
SELECT pg_advisory_xact_lock(hashtextextended('gateway:audit_log', 0));

-- name: audit_chain_head
-- The last entry's id and hash (no row while the log is empty); read under the lock.
SELECT id, hash, at FROM audit_log ORDER BY id DESC LIMIT 1;

-- name: insert_audit_entry
INSERT INTO audit_log (id, at, actor, role, action, target, before, after, reason, source_ip,
    request_id, prev_hash, hash)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13);

-- name: list_audit_entries
-- Newest first: actor $1, action $2 (an exact name, or a prefix ending in `.`), target $3, at in
-- [$4, $5); $6 how many; $7 the last id of the previous page.
SELECT * FROM audit_log
 WHERE ($1::text IS NULL OR actor = $1)
   AND ($2::text IS NULL OR action = $2
        OR (right($2, 1) = '.' AND left(action, length($2)) = $2))
   AND ($3::text IS NULL OR target = $3)
   AND ($4::timestamptz IS NULL OR at >= $4)
   AND ($5::timestamptz IS NULL OR at < $5)
   AND ($7::bigint IS NULL OR id < $7)
 ORDER BY id DESC
 LIMIT $6;

-- name: all_audit_entries
-- The whole log in chain order (streamed by `gateway audit verify`).
SELECT * FROM audit_log ORDER BY id;

-- name: last_file_load
-- The latest entry of action $1 (a file loaded) for the file at path $2: what it held.
SELECT * FROM audit_log WHERE action = $1 AND target = $2 ORDER BY id DESC LIMIT 1;
