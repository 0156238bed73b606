-- The connection itself.

-- name: ping
SELECT 1;
