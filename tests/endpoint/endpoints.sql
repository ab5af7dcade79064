-- Endpoints on a real OpenAI-compatible server (llama-cpp-python's, port :llama) and on the fault
-- server in front of it (port :fault, one mode per URL path). Run by tests/endpoints.sh, which also
-- checks what SQL cannot (timings, the fault server's counters, logs, pg_dump).
\set VERBOSITY default
SET client_min_messages = warning;
-- An error as SQLSTATE and message, the local ports masked (they change from run to run).
CREATE FUNCTION pg_temp.err(q text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE q;
    RETURN 'no error';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE || ': ' || pg_catalog.regexp_replace(SQLERRM, '127\.0\.0\.1:[0-9]+', '127.0.0.1:PORT', 'g');
END $$;
\set llama_v1 'http://127.0.0.1:' :llama '/v1'
\set tokenize 'http://127.0.0.1:' :llama '/extras/tokenize'
\set fault_url 'http://127.0.0.1:' :fault '/'

-- llama-cpp-python takes a JSON schema as {"type": "json_object", "schema": ...}; its default
-- repeat_penalty (1.1) is set to 1.0 so greedy text is llama.cpp's plain greedy text.
SELECT distill.create_endpoint('greedy', :'llama_v1', 'smollm2',
       pg_catalog.jsonb_build_object('response_format_style', 'json_object', 'tokenize_url', :'tokenize',
                                     'extra_body', '{"repeat_penalty": 1.0}'::jsonb));
SELECT name, model, owner, options->'extra_body' AS extra_body, api_key, granted_to FROM distill.endpoints;

-- Every form of complete() on it.
SELECT distill.complete('greedy', 'Say hello', '{"max_tokens": 12}');
SELECT r->'choices'->0->>'messages' AS reply, r->'choices'->0->>'finish_reason' AS finish_reason, r->'usage' AS usage,
       r->>'model' AS model
FROM distill.complete('greedy', '[{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "Capital of France?"}]'::jsonb, '{"max_tokens": 6}') AS r;
SELECT distill.complete('greedy', 'Is the sky blue? Answer yes or no.', '{"choices": ["yes", "no"]}');
SELECT distill.classify('greedy', 'My bill shows roaming charges from my trip.', ARRAY['Roaming fees', 'Slow data speed']);
SELECT (r::jsonb) ? 'name' AS has_name, pg_catalog.jsonb_typeof(r::jsonb->'age') AS age_type
FROM distill.complete('greedy', 'Describe a person as JSON.', '{"max_tokens": 60, "response_format": {"type": "json", "schema": {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}}, "required": ["name", "age"]}}}') AS r;
SELECT distill.try_complete('greedy', 'Say hello', '{"max_tokens": 3}');
SELECT distill.count_tokens('greedy', 'Say hello');
SELECT e->'rows' AS rows, e->'options' AS options, e ? 'exact_match' AS scored
FROM distill.evaluate('greedy', $$SELECT 'Say yes.' AS prompt, 'Yes' AS completion UNION ALL SELECT 'Say no.', 'No'$$,
                      '{"choices": true}') AS e;
SELECT completion_calls >= 8 AS counted, prompt_tokens > 0 AS prompt_tokens_counted FROM distill.usage WHERE model = 'greedy';

-- What an endpoint cannot do, said clearly.
SELECT pg_temp.err($$SELECT distill.complete('greedy', 'hi', '{"choices": ["a", "b"], "scores": true}')$$);
SELECT pg_temp.err($$SELECT distill.complete('greedy', 'hi', '{"response_format": {"type": "regex", "pattern": "[0-9]+"}}')$$);
SELECT pg_temp.err($$SELECT distill.complete('greedy', 'hi', '{"stop": ["a", "b", "c", "d", "e"]}')$$);
-- extract() sends its type's JSON schema as the response_format.
CREATE TYPE person AS (name text, age int);
SELECT * FROM distill.extract('greedy', 'Hello, I am Ann Smith and I am 34 years old.', NULL::person);

-- Bad registrations.
SELECT pg_temp.err($$SELECT distill.create_endpoint('ftp', 'ftp://example.com/v1', 'm')$$);
SELECT pg_temp.err($$SELECT distill.create_endpoint('nohost', 'http:///v1', 'm')$$);
SELECT pg_temp.err($$SELECT distill.create_endpoint('typo', 'http://example.com/v1', 'm', '{"timout": 5}')$$);
SELECT pg_temp.err($$SELECT distill.create_endpoint('neg', 'http://example.com/v1', 'm', '{"timeout": -1}')$$);
SELECT pg_temp.err($$SELECT distill.create_endpoint('x', 'http://example.com/v1', 'm', '{"extra_body": {"model": "other"}}')$$);
SELECT pg_temp.err($$SELECT distill.create_endpoint('x', 'http://example.com/v1', 'm', '{"api_key": "k", "api_key_env": "K"}')$$);
SELECT pg_temp.err($$SELECT distill.create_endpoint('smollm2-135m', 'http://example.com/v1', 'm')$$);
SELECT pg_temp.err($$SELECT distill.create_endpoint('greedy', 'http://example.com/v1', 'm')$$);
SELECT pg_temp.err($$SELECT distill.create_endpoint('bad name', 'http://example.com/v1', 'm')$$);
SELECT pg_temp.err($$SELECT distill.finetune('CREATE', 'greedy', 'smollm2-135m', 'SELECT ''a'' AS prompt, ''b'' AS completion')$$);

-- Faults: each a clear error, with the server's own message where it sent one.
SELECT distill.create_endpoint('hang', :'fault_url' || 'hang/v1', 'm', '{"timeout": 1, "max_retries": 0}');
SELECT distill.create_endpoint('hang_long', :'fault_url' || 'hang/v1', 'm', '{"timeout": 600}');
SELECT distill.create_endpoint('rate_limited', :'fault_url' || '429once/v1', 'm', '{"extra_body": {"repeat_penalty": 1.0}}');
SELECT distill.create_endpoint('broken', :'fault_url' || '500/v1', 'm', '{"max_retries": 1}');
SELECT distill.create_endpoint('garbled', :'fault_url' || 'badjson/v1', 'm');
SELECT distill.create_endpoint('hangs_up', :'fault_url' || 'close/v1', 'm', '{"max_retries": 1}');
SELECT distill.create_endpoint('nobody', 'http://127.0.0.1:1/v1', 'm', '{"max_retries": 0}');
SELECT distill.create_endpoint('locked', :'fault_url' || 'auth/v1', 'm', pg_catalog.jsonb_build_object('api_key', :'wrong_key'));
SELECT pg_temp.err($$SELECT distill.complete('hang', 'hi')$$);
SELECT distill.complete('rate_limited', 'Say hello', '{"max_tokens": 4}');
SELECT pg_temp.err($$SELECT distill.complete('broken', 'hi')$$);
SELECT pg_temp.err($$SELECT distill.complete('garbled', 'hi')$$);
SELECT pg_temp.err($$SELECT distill.complete('hangs_up', 'hi')$$);
SELECT pg_temp.err($$SELECT distill.complete('nobody', 'hi')$$);
-- The fault server's 401 repeats the key it was sent, as OpenAI's does: it is taken out.
SELECT pg_temp.err($$SELECT distill.complete('locked', 'hi')$$);
SELECT distill.try_complete('locked', 'hi') IS NULL AS try_complete_gives_null;
-- Rotating the key.
SELECT distill.alter_endpoint('locked', pg_catalog.jsonb_build_object('api_key', :'key'));
SELECT distill.complete('locked', 'Say hello', '{"max_tokens": 4}');
SELECT name, api_key, options FROM distill.endpoints WHERE name = 'locked';
SELECT pg_temp.err($$SELECT distill.count_tokens('locked', 'hi')$$);

-- complete_rows: every row back, failures as rows.
CREATE TABLE prompts (id int, prompt text);
INSERT INTO prompts SELECT g, 'Say the number ' || g FROM pg_catalog.generate_series(1, 10) g;
INSERT INTO prompts VALUES (11, NULL), (12, '   ');
SELECT * FROM distill.complete_rows('greedy', 'SELECT id, prompt FROM prompts', '{"max_tokens": 5}') ORDER BY id::int;
SELECT count(*) AS rows, count(*) FILTER (WHERE error LIKE '%HTTP 500%after 2 attempts%') AS failed_with_500
FROM distill.complete_rows('broken', 'SELECT id, prompt FROM prompts WHERE id <= 3', '{"max_in_flight": 3}');
SELECT * FROM distill.complete_rows('greedy', $$SELECT id, prompt FROM prompts WHERE id <= 4$$,
                                    '{"choices": ["even", "odd"], "max_in_flight": 2}') ORDER BY id::int;
SELECT pg_temp.err($$SELECT * FROM distill.complete_rows('greedy', 'SELECT id, prompt FROM prompts', '{"max_in_flight": 0}')$$);
SELECT pg_temp.err($$SELECT * FROM distill.complete_rows('greedy', 'SELECT prompt FROM prompts')$$);
SELECT pg_temp.err($$SELECT * FROM distill.complete_rows('greedy', 'DELETE FROM prompts')$$);
SELECT count(*) FROM prompts;

-- Who may do what. alice may use models; bob may also create endpoints.
CREATE ROLE alice LOGIN IN ROLE distill_user;
CREATE ROLE bob LOGIN IN ROLE distill_endpoint_admin;
SET ROLE alice;
SELECT pg_temp.err($$SELECT distill.create_endpoint('mine', 'http://example.com/v1', 'm')$$);
SELECT pg_temp.err($$SELECT distill.complete('greedy', 'hi')$$);
SELECT count(*) AS endpoints_alice_sees FROM distill.endpoints;
SELECT pg_temp.err($$SELECT * FROM distill.endpoint_keys$$);
SELECT pg_temp.err($$SELECT * FROM distill.endpoint_registry$$);
RESET ROLE;
SELECT distill.grant_model('greedy', 'alice');
SET ROLE alice;
SELECT distill.complete('greedy', 'Say hello', '{"max_tokens": 3}');
SELECT name, api_key, granted_to FROM distill.endpoints;
SELECT pg_temp.err($$SELECT distill.alter_endpoint('greedy', '{"timeout": 5}')$$);
SELECT pg_temp.err($$SELECT distill.drop_endpoint('greedy')$$);
RESET ROLE;
SET ROLE bob;
-- Reading the server's environment or files is a superuser's to give.
SELECT pg_temp.err($$SELECT distill.create_endpoint('envkey', 'http://example.com/v1', 'm', '{"api_key_env": "HOME"}')$$);
SELECT pg_temp.err($$SELECT distill.create_endpoint('filekey', 'http://example.com/v1', 'm', '{"api_key_file": "/etc/passwd"}')$$);
SELECT distill.create_endpoint('bobs', :'llama_v1', 'm', pg_catalog.jsonb_build_object('api_key', :'admin_key'));
SELECT name, owner, api_key FROM distill.endpoints ORDER BY name;
SELECT pg_temp.err($$SELECT distill.alter_endpoint('greedy', '{"timeout": 5}')$$);
SELECT pg_temp.err($$SELECT distill.alter_endpoint('bobs', '{"api_key_file": "/etc/passwd"}')$$);
SELECT distill.alter_endpoint('bobs', '{"timeout": 30, "model": "smollm2"}');
SELECT name, model, options FROM distill.endpoints WHERE name = 'bobs';
SELECT distill.drop_endpoint('bobs');
RESET ROLE;
SELECT distill.revoke_model('greedy', 'alice');
SET ROLE alice;
SELECT pg_temp.err($$SELECT distill.complete('greedy', 'hi')$$);
RESET ROLE;

-- A superuser may name an environment variable of the server; one it lacks is a clear error.
SELECT distill.create_endpoint('envkey', :'llama_v1', 'm', '{"api_key_env": "PG_DISTILL_NO_SUCH_VARIABLE"}');
SELECT pg_temp.err($$SELECT distill.complete('envkey', 'hi')$$);
SELECT distill.drop_endpoint('envkey');
SELECT pg_temp.err($$SELECT distill.complete('envkey', 'hi')$$);
SELECT pg_temp.err($$SELECT distill.drop_endpoint('envkey')$$);
