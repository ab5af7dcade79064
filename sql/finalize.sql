-- Runs last, once every function exists: documentation (shown by \df+ distill.*) and privileges.

COMMENT ON SCHEMA distill IS 'pg_distill: fine-tune small language models on your tables and run them in SQL';
COMMENT ON FUNCTION distill.complete(text, text) IS
  'complete(model, prompt): the model''s reply to prompt as one user message, greedy. NULL prompt gives NULL.';
COMMENT ON FUNCTION distill.complete(text, text, jsonb) IS
  'complete(model, prompt, options): options are max_tokens, temperature (0 = greedy), top_p, seed, stop (array of strings), response_format ({"type": "json", "schema": {...}} or {"type": "regex", "pattern": "..."}: the reply always matches); or choices (array of strings: the reply is exactly one of them) with scores (true: a JSON text {"choice", "scores"}).';
COMMENT ON FUNCTION distill.extract_json(text, text, oid, jsonb) IS
  'extract_json(model, text, type [, options]): the JSON object extract() fills its row from, decoded under the composite type''s JSON schema.';
COMMENT ON FUNCTION distill.extract(text, text, anyelement, jsonb) IS
  'extract(model, text, NULL::some_type [, options]): a row of the composite type filled from text (decoding constrained to the type''s JSON schema). Options: those of complete(), nulls (false: every field gets a value), instruction.';
COMMENT ON FUNCTION distill.try_extract(text, text, anyelement, jsonb) IS 'try_extract(model, text, NULL::some_type [, options]): extract(), but NULL instead of an error.';
COMMENT ON FUNCTION distill.version() IS 'pg_distill and engine version';
COMMENT ON FUNCTION distill.finetune(text) IS
  'finetune(''SHOW''): your fine-tuning jobs as a JSON array of {id, status, base_model, model, created_on}.';
COMMENT ON FUNCTION distill.finetune(text, text) IS
  'finetune(''DESCRIBE'', job_id): status, progress, losses per epoch, ETA and errors of a job. finetune(''CANCEL'', job_id): stops a job within one training step.';
COMMENT ON FUNCTION distill.finetune(text, text, text, text, text, jsonb) IS
  'finetune(''CREATE'', name, base_model, training_sql [, validation_sql [, options]]): queues a LoRA fine-tuning job and returns its id. Queries must return text columns prompt and completion. Options: max_epochs, learning_rate, lora_r, lora_alpha, lora_dropout, target_modules, max_seq_len, batch_size, seed, validation_fraction.';
COMMENT ON FUNCTION distill.drop_model(text) IS 'drop_model(name): deletes a fine-tuned model (owner or superuser).';
COMMENT ON VIEW distill.jobs IS 'Your fine-tuning jobs (all jobs for superusers), with a progress bar, a sparkline of recent step losses and the validation accuracy.';
COMMENT ON VIEW distill.models IS 'Fine-tuned models: base model, owner, adapter size, options, metrics and, for a classifier, the label set it answers from.';
COMMENT ON FUNCTION distill.wait(text, double precision) IS
  'wait(job_id [, timeout_seconds]): blocks until the job finishes (NOTICE on progress) and returns its DESCRIBE.';
COMMENT ON FUNCTION distill.grant_model(text, text) IS 'grant_model(name, role): lets role (or public) use a fine-tuned model you own.';
COMMENT ON FUNCTION distill.revoke_model(text, text) IS 'revoke_model(name, role): undoes grant_model.';
COMMENT ON FUNCTION distill.classify(text, text, text[]) IS
  'classify(model, text, labels): the label the model gives text, always exactly one of labels (constrained decoding).';
COMMENT ON FUNCTION distill.complete(text, jsonb, jsonb) IS
  'complete(model, messages [, options]): a chat (array of {role: system|user|assistant, content}, ending with the user''s turn); returns {"choices": [{"messages", "finish_reason"}], "created", "model", "usage": {prompt_tokens, completion_tokens, total_tokens}} like Cortex. Options as for complete(model, prompt, options).';
COMMENT ON FUNCTION distill.try_complete(text, text) IS 'try_complete(model, prompt): complete(), but NULL instead of an error.';
COMMENT ON FUNCTION distill.try_complete(text, text, jsonb) IS 'try_complete(model, prompt, options): complete(), but NULL instead of an error.';
COMMENT ON FUNCTION distill.try_complete(text, jsonb, jsonb) IS 'try_complete(model, messages, options): the chat form of complete(), but NULL instead of an error.';
COMMENT ON FUNCTION distill.count_tokens(text, text) IS 'count_tokens(model, text): tokens of text in the model''s tokenizer (no chat template).';
COMMENT ON FUNCTION distill.evaluate(text, text, jsonb) IS
  'evaluate(model, sql [, options]): runs the model on the query''s prompt column and scores the replies against its completion column: rows, exact_match, accuracy, macro_f1, per_label {precision, recall, f1, support}, confusion. Options as complete(); "choices": true constrains replies to the query''s distinct completions.';
COMMENT ON FUNCTION distill.export_adapter(text) IS
  'export_adapter(model): the LoRA adapter of a fine-tuned model you own, as a zip of adapter_config.json + adapter_model.safetensors (Hugging Face PEFT format).';
COMMENT ON FUNCTION distill.import_adapter(text, text, bytea) IS
  'import_adapter(name, base_model, archive): serves a PEFT LoRA adapter zip (adapter_config.json + adapter_model.safetensors) as a model you own; checked against the base model''s shapes.';
COMMENT ON FUNCTION distill.completion_usage() IS 'Completion calls and tokens per model and role since the server started (shared memory); read it through the distill.usage view.';
COMMENT ON FUNCTION distill.reset_usage() IS 'reset_usage(): zeroes the completion counters of distill.usage (superuser).';
COMMENT ON FUNCTION distill.progress_bar(double precision) IS 'progress_bar(fraction): a text progress bar, as DESCRIBE and distill.jobs show.';
COMMENT ON FUNCTION distill.sparkline(jsonb) IS 'sparkline(json array of numbers): one block character per value, lowest to highest (recent losses in distill.jobs).';
COMMENT ON FUNCTION distill.create_endpoint(text, text, text, jsonb) IS
  'create_endpoint(name, base_url, model [, options]): an OpenAI-compatible chat-completions server (OpenAI, vLLM, llama.cpp, Ollama, LiteLLM) usable as a model by name. Options: api_key (stored, never shown) or api_key_env / api_key_file (superuser), connect_timeout, timeout, max_retries, max_in_flight, response_format_style, tokenize_url. Superusers and distill_endpoint_admin only: rows sent to it leave the database.';
COMMENT ON FUNCTION distill.alter_endpoint(text, jsonb) IS
  'alter_endpoint(name, changes): base_url, model, settings (null restores a default), api_key (a string rotates it, null removes it).';
COMMENT ON FUNCTION distill.drop_endpoint(text) IS 'drop_endpoint(name): deletes an endpoint (owner or superuser).';
COMMENT ON VIEW distill.endpoints IS 'Endpoints you can use: URL, model id, owner, settings, where the key comes from (stored, environment, file, none; never the key), grants.';
COMMENT ON FUNCTION distill.complete_rows(text, text, jsonb) IS
  'complete_rows(model, sql [, options]): the model over the query''s id and prompt columns, streamed back as (id, completion, error). Local models decode batch_size rows together (default 16); endpoints get max_in_flight requests at once (default 8). A failing row gets its error, not an aborted run. Options: those of complete(), batch_size, max_in_flight.';
COMMENT ON VIEW distill.usage IS 'Per model and role: fine-tuning jobs, trained tokens and time; completion calls, tokens and time since the server started.';

-- Privileges. Like Cortex's CORTEX_USER database role, calling models and training them are rights
-- an administrator gives: GRANT distill_user TO alice (complete, evaluate, count_tokens, the views,
-- and managing one's own models and jobs); GRANT distill_trainer TO bob (also finetune CREATE and
-- import_adapter, which use the worker and the disk). Superusers need neither. The functions check
-- model ownership and grants themselves on top of this.
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA distill FROM PUBLIC;
GRANT EXECUTE ON FUNCTION distill.version(), distill.progress_bar(double precision), distill.sparkline(jsonb) TO PUBLIC;
GRANT EXECUTE ON FUNCTION
    distill.complete(text, text), distill.complete(text, text, jsonb), distill.complete(text, jsonb, jsonb),
    distill.try_complete(text, text), distill.try_complete(text, text, jsonb), distill.try_complete(text, jsonb, jsonb),
    distill.classify(text, text, text[]), distill.count_tokens(text, text), distill.evaluate(text, text, jsonb),
    distill.extract_json(text, text, oid, jsonb), distill.extract(text, text, anyelement, jsonb),
    distill.try_extract(text, text, anyelement, jsonb),
    distill.export_adapter(text), distill.drop_model(text), distill.grant_model(text, text),
    distill.revoke_model(text, text), distill.wait(text, double precision), distill.finetune(text),
    distill.finetune(text, text), distill.completion_usage(), distill.complete_rows(text, text, jsonb)
TO distill_user;
GRANT EXECUTE ON FUNCTION distill.create_endpoint(text, text, text, jsonb), distill.alter_endpoint(text, jsonb),
    distill.drop_endpoint(text)
TO distill_endpoint_admin;
GRANT EXECUTE ON FUNCTION distill.finetune(text, text, text, text, text, jsonb), distill.import_adapter(text, text, bytea)
TO distill_trainer;
GRANT SELECT ON distill.jobs, distill.models, distill.endpoints, distill.usage TO distill_user;
