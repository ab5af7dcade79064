-- Documentation shown by \df+ distill.*
COMMENT ON SCHEMA distill IS 'pg_distill: fine-tune small language models on your tables and run them in SQL';
COMMENT ON FUNCTION distill.complete(text, text) IS
  'complete(model, prompt): the model''s reply to prompt as one user message, greedy. NULL prompt gives NULL.';
COMMENT ON FUNCTION distill.complete(text, text, jsonb) IS
  'complete(model, prompt, options): options are max_tokens, temperature (0 = greedy), top_p, seed, stop (array of strings); or choices (array of strings: the reply is exactly one of them) with scores (true: a JSON text {"choice", "scores"}).';
COMMENT ON FUNCTION distill.version() IS 'pg_distill and engine version';
COMMENT ON FUNCTION distill.finetune(text) IS
  'finetune(''SHOW''): your fine-tuning jobs as a JSON array of {id, status, base_model, model, created_on}.';
COMMENT ON FUNCTION distill.finetune(text, text) IS
  'finetune(''DESCRIBE'', job_id): status, progress, losses per epoch, ETA and errors of a job. finetune(''CANCEL'', job_id): stops a job within one training step.';
COMMENT ON FUNCTION distill.finetune(text, text, text, text, text, jsonb) IS
  'finetune(''CREATE'', name, base_model, training_sql [, validation_sql [, options]]): queues a LoRA fine-tuning job and returns its id. Queries must return text columns prompt and completion. Options: max_epochs, learning_rate, lora_r, lora_alpha, lora_dropout, target_modules, max_seq_len, batch_size, seed, validation_fraction.';
COMMENT ON FUNCTION distill.drop_model(text) IS 'drop_model(name): deletes a fine-tuned model (owner or superuser).';
COMMENT ON VIEW distill.jobs IS 'Your fine-tuning jobs (all jobs for superusers).';
COMMENT ON VIEW distill.models IS 'Fine-tuned models: base model, owner, adapter size, options and metrics.';
COMMENT ON FUNCTION distill.wait(text, double precision) IS
  'wait(job_id [, timeout_seconds]): blocks until the job finishes (NOTICE on progress) and returns its DESCRIBE.';
COMMENT ON FUNCTION distill.grant_model(text, text) IS 'grant_model(name, role): lets role (or public) use a fine-tuned model you own.';
COMMENT ON FUNCTION distill.revoke_model(text, text) IS 'revoke_model(name, role): undoes grant_model.';
COMMENT ON FUNCTION distill.classify(text, text, text[]) IS
  'classify(model, text, labels): the label the model gives text, always exactly one of labels (constrained decoding).';
