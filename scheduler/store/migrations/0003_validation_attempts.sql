-- Validation attempts of a batch, counted before each one starts: a batch whose validation
-- kills the scheduler (or never ends) is failed after a bounded number of tries instead of
-- taking the scheduler down again after every restart.
ALTER TABLE batches ADD COLUMN validation_attempts integer NOT NULL DEFAULT 0;
