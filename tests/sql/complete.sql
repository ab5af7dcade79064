-- distill.complete() on the default base model.
\ir fixtures/extension.psql
\set VERBOSITY terse

SELECT distill.version() LIKE 'pg_distill 0.1.0 (engine 0.1.0, %)' AS version_ok;

-- Greedy output equals llama.cpp's on the same GGUF (tests/fixtures/smollm2_greedy_reference.json) up to
-- its 11th token, where llama.cpp's top two are 0.0065 logit apart and summation order decides.
SELECT distill.complete('smollm2-135m', E'Classify this support ticket into one of: Roaming fees, Slow data speed, Lost phone, Add new line, Closing account. Reply with the category only.\nTicket: I was charged extra while travelling in Spain last week.', '{"max_tokens": 10}');

-- Options. max_tokens and stop are checked against the model's own longer greedy reply, not against
-- fixed words: this untuned model's first word here ("1." or "The") is a near-tie that CPU kernels
-- (AVX-512 VNNI or AVX2) settle differently, as engine/tests/generation_reference.rs documents.
CREATE TEMP TABLE counted AS
SELECT distill.complete('smollm2-135m', 'Count from one to ten.', '{"max_tokens": 40}') AS full_reply,
       distill.complete('smollm2-135m', 'Count from one to ten.', '{"max_tokens": 4}') AS four_tokens;
SELECT length(four_tokens) BETWEEN 1 AND length(full_reply) - 1 AS max_tokens_cuts_short,
       starts_with(full_reply, four_tokens) AS max_tokens_gives_a_prefix
FROM counted;
-- A stop sequence taken from the middle of the full reply: the reply ends just before its first occurrence.
SELECT distill.complete('smollm2-135m', 'Count from one to ten.', jsonb_build_object('max_tokens', 40, 'stop', jsonb_build_array(stop)))
         = left(full_reply, strpos(full_reply, stop) - 1) AS stop_ends_before_the_sequence,
       length(stop) = 3 AND strpos(full_reply, stop) > 1 AS stop_is_inside
FROM (SELECT full_reply, substr(full_reply, 8, 3) AS stop FROM counted) c;
SELECT distill.complete('smollm2-135m', 'Name a colour.', '{"temperature": 0.8, "seed": 3, "max_tokens": 8}')
     = distill.complete('smollm2-135m', 'Name a colour.', '{"temperature": 0.8, "seed": 3, "max_tokens": 8}') AS seeded_sampling_repeats;
-- Temperature is applied: over 8 seeds, sampling at 1.0 gives more than one reply and some that
-- differ from the greedy one (were temperature ignored, all 8 would equal it).
SELECT count(DISTINCT r) > 1 AS seeds_give_different_replies, bool_or(r <> greedy) AS sampling_leaves_greedy
FROM (SELECT distill.complete('smollm2-135m', 'Name a colour.', jsonb_build_object('temperature', 1.0, 'seed', s, 'max_tokens', 8)) AS r,
             distill.complete('smollm2-135m', 'Name a colour.', '{"max_tokens": 8}') AS greedy
      FROM generate_series(1, 8) s) t;

-- NULL in, NULL out (STRICT).
SELECT distill.complete('smollm2-135m', NULL) IS NULL AS null_prompt;
SELECT distill.complete(NULL, 'hello') IS NULL AS null_model;

-- Bad input: clear errors.
SELECT distill.complete('smollm2-135m', '');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.complete('smollm2-135m', E' \n\t');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.complete('', 'hello');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.complete('no-such-model', 'hello');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.complete('../../etc/passwd', 'hello');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.complete('smollm2-135m', 'hello', '{"max_tokenz": 3}');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.complete('smollm2-135m', 'hello', '{"temperature": 5}');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.complete('smollm2-135m', 'hello', '{"max_tokens": "many"}');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.complete('smollm2-135m', 'hello', '{"max_tokens": 0}');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.complete('smollm2-135m', 'hello', '[1, 2]');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.complete('smollm2-135m', 'hello', '{"stop": [""]}');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.complete('smollm2-135m', 'hello', '{"top_p": 0}');
\echo SQLSTATE :LAST_ERROR_SQLSTATE

-- A query over a table (the model is loaded once per backend: see the pgrx test).
\getenv datafiles PGDATAFILES
\set tickets_csv :datafiles '/test.csv'
CREATE TABLE tickets (id text PRIMARY KEY, request text, label text);
COPY tickets FROM :'tickets_csv' WITH (FORMAT csv, HEADER true);
SELECT count(*) AS answered
FROM (SELECT distill.complete('smollm2-135m', request, '{"max_tokens": 2}') AS answer FROM tickets) t
WHERE answer <> '';

-- Weight formats: q8_0 is faster on CPUs; this prompt's greedy answer turns on its 11th token, where
-- formats part (see engine/tests/generation_reference.rs).
SET distill.weight_format = 'q8_0';
SELECT left(distill.complete('smollm2-135m', E'Classify this support ticket into one of: Roaming fees, Slow data speed, Lost phone, Add new line, Closing account. Reply with the category only.\nTicket: I was charged extra while travelling in Spain last week.', '{"max_tokens": 10}'), 44) AS q8_0_start;
SET distill.weight_format = 'int2';
SELECT distill.complete('smollm2-135m', 'hello');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
RESET distill.weight_format;
