-- The request id of what caused an event: the merchant's request (`req_…`, its X-Request-Id),
-- the channel's notification (`req_…`) or a background job's run (`job_…`). Callbacks carry
-- it as X-Request-Id. NULL for events written before this column.

ALTER TABLE events ADD COLUMN request_id text;
