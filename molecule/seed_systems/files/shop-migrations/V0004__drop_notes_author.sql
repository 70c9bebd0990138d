-- System D's contract, shipped a release too early: the serving release may still use the column, and
-- the file carries no allowance, so safe_migration refuses it before the app's tool runs.
ALTER TABLE notes DROP COLUMN author;
