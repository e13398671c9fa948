-- Which process executed a run: its operating-system process id and whether that process
-- was the shared pool or the tenant's dedicated worker, so an auditor can see the boundary
-- from the run record itself. Runs from before this column have neither.
ALTER TABLE runs ADD COLUMN process_id INTEGER;
ALTER TABLE runs ADD COLUMN isolation TEXT;
