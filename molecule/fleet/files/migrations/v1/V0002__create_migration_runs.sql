-- One row per run of a release's migration: the fleet scenario counts them (one per release, however
-- many hosts the release reached).
CREATE TABLE fleet_migration_runs (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    release text NOT NULL,
    ran_at timestamptz NOT NULL DEFAULT now()
);

INSERT INTO fleet_migration_runs (release) VALUES ('v1');
