-- complete() with a chat (messages jsonb) returning Cortex-shaped jsonb; try_complete(); count_tokens();
-- the usage view.
\ir fixtures/extension.psql
\set VERBOSITY default
SELECT distill.reset_usage();

-- The reply's shape: choices[0].messages, finish_reason, created, model, usage (tokens add up).
SELECT jsonb_typeof(r->'choices') AS choices, jsonb_typeof(r->'choices'->0->'messages') AS messages,
       r->'choices'->0->>'finish_reason' AS finish_reason, r->>'model' AS model,
       (r->>'created')::bigint > 1700000000 AS created_is_unix_time,
       (r->'usage'->>'completion_tokens')::int AS completion_tokens,
       (r->'usage'->>'prompt_tokens')::int + (r->'usage'->>'completion_tokens')::int = (r->'usage'->>'total_tokens')::int AS total_adds_up
FROM distill.complete('smollm2-135m',
       '[{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "Count from one to ten."}]'::jsonb,
       '{"max_tokens": 4}') AS r;

-- One user message is the same conversation complete(model, prompt) has.
SELECT (distill.complete('smollm2-135m', '[{"role": "user", "content": "Count from one to ten."}]'::jsonb, '{"max_tokens": 6}')
        ->'choices'->0->>'messages') = distill.complete('smollm2-135m', 'Count from one to ten.', '{"max_tokens": 6}') AS same_as_prompt_form;
-- Options are optional; earlier turns (assistant included) are part of the prompt.
SELECT (distill.complete('smollm2-135m', '[{"role": "user", "content": "Hi"}]'::jsonb)->'usage'->>'prompt_tokens')::int
     < (distill.complete('smollm2-135m', '[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
                                           {"role": "user", "content": "Hi"}]'::jsonb, '{"max_tokens": 2}')->'usage'->>'prompt_tokens')::int
       AS history_counts;
-- Choices and scores work in the chat form too.
SELECT r->'choices'->0->>'messages' IN ('yes', 'no') AS within_choices,
       (SELECT count(*) FROM jsonb_object_keys(r->'choices'->0->'scores')) AS scores
FROM distill.complete('smollm2-135m', '[{"role": "user", "content": "Is the sky blue? Answer yes or no."}]'::jsonb,
                      '{"choices": ["yes", "no"], "scores": true}') AS r;
-- A string literal that is not cast is a prompt: the text form wins overload resolution.
SELECT distill.complete('smollm2-135m', '[{"role": "user", "content": "Hi"}]', '{"max_tokens": 1}') IS NOT NULL AS text_form;

-- Malformed messages: each a clear error.
\set VERBOSITY terse
SELECT distill.complete('smollm2-135m', '{"role": "user", "content": "hi"}'::jsonb);
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.complete('smollm2-135m', '[]'::jsonb);
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.complete('smollm2-135m', '["hi"]'::jsonb);
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.complete('smollm2-135m', '[{"role": "user"}]'::jsonb);
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.complete('smollm2-135m', '[{"role": "user", "content": 5}]'::jsonb);
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.complete('smollm2-135m', '[{"role": "user", "content": "hi", "name": "bob"}]'::jsonb);
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.complete('smollm2-135m', '[{"role": "bot", "content": "hi"}]'::jsonb);
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.complete('smollm2-135m', '[{"role": "user", "content": "hi"}, {"role": "system", "content": "x"}, {"role": "user", "content": "hi"}]'::jsonb);
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.complete('smollm2-135m', '[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]'::jsonb);
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.complete('smollm2-135m', '[{"role": "user", "content": "  "}]'::jsonb);
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.complete('smollm2-135m', '[{"role": "user", "content": "hi"}]'::jsonb, '{"max_tokenz": 3}');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.complete('smollm2-135m', '[{"role": "user", "content": "hi"}]'::jsonb, '{"choices": []}');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.complete('no-such-model', '[{"role": "user", "content": "hi"}]'::jsonb);
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.complete('smollm2-135m', NULL::jsonb) IS NULL AS null_messages;
\set VERBOSITY default

-- try_complete(): NULL where complete() raises an error, the same reply otherwise.
SELECT distill.try_complete('smollm2-135m', '') IS NULL AS empty_prompt,
       distill.try_complete('no-such-model', 'hi') IS NULL AS unknown_model,
       distill.try_complete('smollm2-135m', 'hi', '{"max_tokenz": 3}') IS NULL AS bad_option,
       distill.try_complete('smollm2-135m', '[{"role": "bot", "content": "hi"}]'::jsonb, '{}') IS NULL AS bad_messages,
       distill.try_complete('smollm2-135m', 'Count from one to ten.', '{"max_tokens": 4}')
         = distill.complete('smollm2-135m', 'Count from one to ten.', '{"max_tokens": 4}') AS same_when_it_works,
       distill.try_complete('smollm2-135m', '[{"role": "user", "content": "Count from one to ten."}]'::jsonb, '{"max_tokens": 4}')
         ->'choices'->0->>'messages' = distill.complete('smollm2-135m', 'Count from one to ten.', '{"max_tokens": 4}') AS chat_same_when_it_works;
-- A bad row does not stop the query.
SELECT count(*) AS rows, count(r) AS replies
FROM (SELECT distill.try_complete('smollm2-135m', p, '{"max_tokens": 1}') AS r FROM unnest(ARRAY['Say yes.', ' ', 'Say no.']) p) t;

-- count_tokens(): the tokenizer alone, no chat template.
SELECT distill.count_tokens('smollm2-135m', 'Hello world') AS hello_world,
       distill.count_tokens('smollm2-135m', '') AS empty,
       distill.count_tokens('smollm2-135m', repeat('roaming ', 100)) AS roaming_100;
SELECT distill.count_tokens('no-such-model', 'hi');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT distill.count_tokens('smollm2-135m', NULL) IS NULL AS null_text;

-- Usage: completion calls and tokens per model and role, counted by every backend.
SELECT model, role, jobs, completion_calls, prompt_tokens > 0 AS prompt_tokens, completion_tokens > 0 AS completion_tokens
FROM distill.usage WHERE model = 'smollm2-135m';
CREATE ROLE regress_chat_user IN ROLE distill_user;
SET ROLE regress_chat_user;
SELECT distill.complete('smollm2-135m', 'Say yes.', '{"max_tokens": 1}') IS NOT NULL AS answered;
-- A role sees its own counters only.
SELECT model, role, completion_calls, completion_tokens FROM distill.usage;
SELECT distill.reset_usage();
\echo SQLSTATE :LAST_ERROR_SQLSTATE
RESET ROLE;
SELECT role, completion_calls FROM distill.usage WHERE model = 'smollm2-135m' ORDER BY role::text;
SELECT distill.reset_usage();
SELECT count(*) AS rows_after_reset FROM distill.usage WHERE completion_calls > 0;
DROP ROLE regress_chat_user;

-- Every function and view of the extension is documented for \df+ and \dv+.
SELECT p.oid::regprocedure AS undocumented FROM pg_proc p
WHERE p.pronamespace = 'distill'::regnamespace AND obj_description(p.oid, 'pg_proc') IS NULL
  AND p.proname <> 'model_registry_new_version';
SELECT c.relname AS undocumented_view FROM pg_class c
WHERE c.relnamespace = 'distill'::regnamespace AND c.relkind = 'v' AND obj_description(c.oid, 'pg_class') IS NULL;
