-- The worker's queue: the backend inserts queued jobs, the worker claims them with
-- FOR UPDATE SKIP LOCKED and marks them done.
CREATE TABLE jobs (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    payload text NOT NULL,
    status text NOT NULL DEFAULT 'queued',
    processed_by text,
    processed_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX jobs_queued ON jobs (id) WHERE status = 'queued';
