-- Documentation shown by \df+ distill.*
COMMENT ON SCHEMA distill IS 'pg_distill: fine-tune small language models on your tables and run them in SQL';
COMMENT ON FUNCTION distill.complete(text, text) IS
  'complete(model, prompt): the model''s reply to prompt as one user message, greedy. NULL prompt gives NULL.';
COMMENT ON FUNCTION distill.complete(text, text, jsonb) IS
  'complete(model, prompt, options): options are max_tokens, temperature (0 = greedy), top_p, seed, stop (array of strings).';
COMMENT ON FUNCTION distill.version() IS 'pg_distill and engine version';
