INSERT INTO fleet_migration_runs (release) VALUES ('v3');
