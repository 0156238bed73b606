-- Operators (people with an account, API.md §4.1), service tokens, console sessions and the
-- sign-in throttle; the audit log, append-only and hash-chained; and `gateway_app`, the
-- database role the gateway runs as (through a login role that is a member of it): every
-- right the gateway needs, and on audit_log only SELECT and INSERT.
--
-- No column here is named status or state: whether an account is disabled, a token revoked or
-- a session ended is the time it happened (NULL while it has not).

CREATE TABLE operators (
    id              text PRIMARY KEY,
    email           text NOT NULL,
    role            text NOT NULL
                    CONSTRAINT operators_role_check
                    CHECK (role IN ('viewer', 'support', 'finance', 'admin')),
    password_hash   text NOT NULL,           -- argon2id, PHC string
    created_at      timestamptz NOT NULL DEFAULT now(),
    disabled_at     timestamptz,
    last_sign_in_at timestamptz,
    CHECK (email = lower(email))
);
CREATE UNIQUE INDEX operators_email ON operators (email);

CREATE TABLE operator_tokens (
    id          text PRIMARY KEY,
    name        text NOT NULL,
    role        text NOT NULL
                CONSTRAINT operator_tokens_role_check
                CHECK (role IN ('viewer', 'support', 'finance', 'admin')),
    token_hash  bytea NOT NULL,              -- SHA-256 of the token
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
CREATE UNIQUE INDEX operator_tokens_hash ON operator_tokens (token_hash);

-- A console session: the cookie holds a random value, the table only its SHA-256. It ends at
-- expires_at (absolute), after an idle time past last_seen_at, or when ended_at is set.
CREATE TABLE operator_sessions (
    id           text PRIMARY KEY,
    token_hash   bytea NOT NULL,
    operator_id  text NOT NULL REFERENCES operators(id),
    csrf_token   text NOT NULL,
    source_ip    text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_seen_at timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    ended_at     timestamptz
);
CREATE UNIQUE INDEX operator_sessions_token ON operator_sessions (token_hash);
CREATE INDEX operator_sessions_operator ON operator_sessions (operator_id) WHERE ended_at IS NULL;

-- Failed sign-ins per account (`account:<email>`, known or not) and per source address
-- (`address:<ip>`), counted in a window that starts with the first failure.
CREATE TABLE sign_in_failures (
    key            text PRIMARY KEY,
    failures       integer NOT NULL,
    first_at       timestamptz NOT NULL,
    last_at        timestamptz NOT NULL,
    locked_until   timestamptz
);

CREATE TABLE audit_log (
    id          bigint PRIMARY KEY,          -- 1, 2, 3 …: given out under the writers' lock
    at          timestamptz NOT NULL,
    actor       text NOT NULL,
    role        text,
    action      text NOT NULL,
    target      text,
    before      jsonb,
    after       jsonb,
    reason      text,
    source_ip   text,
    request_id  text,
    prev_hash   text NOT NULL,
    hash        text NOT NULL UNIQUE
);
CREATE INDEX audit_log_at ON audit_log (at);
CREATE INDEX audit_log_actor ON audit_log (actor, id);
CREATE INDEX audit_log_action ON audit_log (action, id);
CREATE INDEX audit_log_target ON audit_log (target, id);

-- A delivery's attempts in order, as JSON (`GET /admin/deliveries`, `GET /admin/payments/{id}`).
CREATE FUNCTION callback_attempt_log(delivery text) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT COALESCE(jsonb_agg(jsonb_build_object(
               'attempted_at', a.attempted_at, 'status_code', a.status_code,
               'latency_ms', a.latency_ms, 'error', a.error,
               'response_body', a.response_body) ORDER BY a.id), '[]'::jsonb)
      FROM callback_attempts a WHERE a.delivery_id = delivery
$$;

-- Append-only whoever asks, the table's owner included (a superuser can still disable the
-- trigger: the hash chain is what shows it was done).
CREATE FUNCTION audit_log_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_refuse_change();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_refuse_change();

-- The gateway's role. Roles belong to the cluster, not the database: another database may have
-- created it already (or be creating it now).
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'gateway_app') THEN
        CREATE ROLE gateway_app NOLOGIN;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
END
$$;

GRANT USAGE ON SCHEMA public TO gateway_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO gateway_app;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO gateway_app;
REVOKE UPDATE, DELETE, TRUNCATE ON audit_log FROM gateway_app;
REVOKE INSERT, UPDATE, DELETE ON schema_migrations FROM gateway_app;
-- tables and sequences later migrations create (as the role that runs them, this one)
ALTER DEFAULT PRIVILEGES IN SCHEMA public
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO gateway_app;
ALTER DEFAULT PRIVILEGES IN SCHEMA public
    GRANT USAGE, SELECT ON SEQUENCES TO gateway_app;
