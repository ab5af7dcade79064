-- Parallel query: with parallel plans made cheap, SELECT complete(...) FROM a table runs in parallel
-- workers (a Gather over the scan that computes complete()), and gives what the serial plan gives,
-- for the base model and a tuned one (its registry lookups run in the workers as the registry's owner).
\set VERBOSITY default
SET client_min_messages = warning;
\ir fixtures/ticket_classifier.psql
CREATE TABLE parallel_prompts AS SELECT id, prompt FROM ticket_prompts;
ANALYZE parallel_prompts;
SET parallel_setup_cost = 0;
SET parallel_tuple_cost = 0;
SET min_parallel_table_scan_size = 0;
SET max_parallel_workers_per_gather = 2;
-- Every row in a worker: the leader only gathers.
SET parallel_leader_participation = off;
EXPLAIN (COSTS OFF, VERBOSE)
SELECT id, distill.complete('smollm2-135m', prompt, '{"max_tokens": 4}') FROM parallel_prompts;
-- The plan that ran, and how many workers it had (EXPLAIN ANALYZE's row counts per worker vary).
CREATE FUNCTION pg_temp.workers_launched(q text) RETURNS int LANGUAGE plpgsql AS $$
DECLARE plan jsonb;
BEGIN
    EXECUTE 'EXPLAIN (ANALYZE, FORMAT JSON) ' || q INTO plan;
    RETURN (plan->0->'Plan'->>'Workers Launched')::int;
END $$;
SELECT pg_temp.workers_launched($$CREATE TABLE parallel_base AS SELECT id, distill.complete('smollm2-135m', prompt, '{"max_tokens": 4}') AS reply FROM parallel_prompts$$) > 0 AS base_in_workers;
SELECT pg_temp.workers_launched($$CREATE TABLE parallel_tuned AS SELECT id, distill.complete('ticket_classifier', prompt) AS reply FROM parallel_prompts$$) > 0 AS tuned_in_workers;
-- The same queries, serial.
SET max_parallel_workers_per_gather = 0;
CREATE TABLE serial_base AS SELECT id, distill.complete('smollm2-135m', prompt, '{"max_tokens": 4}') AS reply FROM parallel_prompts;
CREATE TABLE serial_tuned AS SELECT id, distill.complete('ticket_classifier', prompt) AS reply FROM parallel_prompts;
SELECT (SELECT count(*) FROM parallel_base) AS rows,
       (SELECT count(*) FROM parallel_base p JOIN serial_base s USING (id) WHERE p.reply = s.reply) AS base_same,
       (SELECT count(*) FROM parallel_tuned p JOIN serial_tuned s USING (id) WHERE p.reply = s.reply) AS tuned_same;
RESET parallel_setup_cost;
RESET parallel_tuple_cost;
RESET min_parallel_table_scan_size;
RESET max_parallel_workers_per_gather;
RESET parallel_leader_participation;
DROP TABLE parallel_prompts, parallel_base, parallel_tuned, serial_base, serial_tuned;
