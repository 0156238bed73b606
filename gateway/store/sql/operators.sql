-- Operators' accounts, service tokens, console sessions and the sign-in throttle.

-- name: insert_operator
-- No row when the email is taken.
INSERT INTO operators (id, email, role, password_hash) VALUES ($1, $2, $3, $4)
ON CONFLICT (email) DO NOTHING
RETURNING *;

-- name: operator_by_email
SELECT * FROM operators WHERE email = $1;

-- name: lock_operator_by_email
SELECT * FROM operators WHERE email = $1 FOR UPDATE;

-- name: list_operators
SELECT * FROM operators ORDER BY email;

-- name: disable_operator
-- Disable account $1 and end its sessions. No row when it was disabled already.
WITH disabled AS (
    UPDATE operators SET disabled_at = now() WHERE id = $1 AND disabled_at IS NULL
    RETURNING *
), ended AS (
    UPDATE operator_sessions SET ended_at = now()
     WHERE operator_id = $1 AND ended_at IS NULL AND EXISTS (SELECT 1 FROM disabled)
)
SELECT * FROM disabled;

-- name: set_operator_password_hash
UPDATE operators SET password_hash = $2 WHERE id = $1;

-- name: insert_operator_token
INSERT INTO operator_tokens (id, name, role, token_hash) VALUES ($1, $2, $3, $4)
RETURNING *;

-- name: active_operator_token
-- The token whose SHA-256 is $1, unless revoked.
SELECT * FROM operator_tokens WHERE token_hash = $1 AND revoked_at IS NULL;

-- name: revoke_operator_token
-- No row when there is no such token or it was revoked already.
UPDATE operator_tokens SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL
RETURNING *;

-- name: list_operator_tokens
SELECT * FROM operator_tokens ORDER BY created_at, id;

-- name: insert_operator_session
-- A new session of operator $3 (cookie hash $2), ending at the latest in $6 seconds; the
-- operator's last sign-in is now.
WITH signed_in AS (
    UPDATE operators SET last_sign_in_at = now() WHERE id = $3
)
INSERT INTO operator_sessions (id, token_hash, operator_id, csrf_token, source_ip, expires_at)
VALUES ($1, $2, $3, $4, $5, now() + make_interval(secs => $6))
RETURNING *;

-- name: live_operator_session
-- The session whose cookie hashes to $1 with its operator, if it is live: not ended, not past
-- its absolute end, not idle for $2 seconds or more, its operator not disabled. Its last use
-- moves to now when it is older than $3 seconds (one write a while, not one per request).
WITH live AS (
    SELECT s.id FROM operator_sessions s JOIN operators o ON o.id = s.operator_id
     WHERE s.token_hash = $1 AND s.ended_at IS NULL AND s.expires_at > now()
       AND s.last_seen_at > now() - make_interval(secs => $2) AND o.disabled_at IS NULL
), touched AS (
    UPDATE operator_sessions s SET last_seen_at = now()
      FROM live
     WHERE s.id = live.id AND s.last_seen_at < now() - make_interval(secs => $3)
)
SELECT s.id AS session_id, s.csrf_token, s.created_at AS session_created_at,
       s.expires_at, s.last_seen_at, o.*
  FROM live JOIN operator_sessions s ON s.id = live.id JOIN operators o ON o.id = s.operator_id;

-- name: end_operator_session
-- No row when it had ended already.
UPDATE operator_sessions SET ended_at = now() WHERE id = $1 AND ended_at IS NULL
RETURNING id, operator_id;

-- name: lock_sign_in_failures
-- The throttle rows of keys $1 (created empty when missing), locked until the transaction ends
-- (taken in the order of their keys, so concurrent sign-ins queue rather than deadlock); each
-- with the time now.
INSERT INTO sign_in_failures (key, failures, first_at, last_at)
SELECT k, 0, now(), now() FROM unnest($1::text[]) AS k ORDER BY k
ON CONFLICT (key) DO UPDATE SET key = EXCLUDED.key
RETURNING key, failures, first_at, last_at, locked_until, now() AS now;

-- name: record_sign_in_failure
-- Key $1 now counts $2 failures in the window that started at $3; locked until $4 (NULL: not
-- locked).
UPDATE sign_in_failures SET failures = $2, first_at = $3, last_at = now(), locked_until = $4
 WHERE key = $1;

-- name: clear_sign_in_failures
DELETE FROM sign_in_failures WHERE key = $1;

-- name: purge_sign_in_failures
-- Rows whose window and lock-out are both over $1 seconds ago.
DELETE FROM sign_in_failures
 WHERE last_at < now() - make_interval(secs => $1)
   AND (locked_until IS NULL OR locked_until < now());
