-- System D's expand: a nullable column, which the serving release (it names the columns it reads and
-- writes) does not notice. A later release drops it again, once nothing uses it.
ALTER TABLE notes ADD COLUMN author text;
