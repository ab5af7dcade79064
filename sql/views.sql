-- Views and SQL-language functions that call the extension's Rust functions (created after them).

-- A role sees its own jobs (and those of roles it belongs to); superusers see all. security_barrier,
-- as every view here that filters by role: the caller's WHERE runs after the view's filter.
CREATE VIEW distill.jobs WITH (security_barrier) AS
SELECT id, model, base_model, owner, status, distill.progress_bar(progress) AS progress,
       distill.sparkline(recent_losses) AS recent_losses,
       created_on, finished_on, trained_tokens, training_loss, validation_loss,
       (validation_metrics ->> 'accuracy')::float8 AS validation_accuracy, error
FROM distill.job_registry
WHERE pg_catalog.pg_has_role(current_user, owner, 'USAGE')
ORDER BY created_on;

-- Use of each model by each role: fine-tuning (from the job registry) and completion calls (counted
-- in shared memory since the server started; see src/usage.rs). A role sees its own rows.
CREATE VIEW distill.usage WITH (security_barrier) AS
WITH training AS (
    SELECT model, owner::oid AS role, count(*) AS jobs,
           count(*) FILTER (WHERE status = 'SUCCESS') AS succeeded_jobs,
           sum(trained_tokens) AS trained_tokens,
           sum(extract(epoch FROM coalesce(finished_on, now()) - started_on))
               FILTER (WHERE started_on IS NOT NULL) AS training_seconds
    FROM distill.job_registry
    WHERE pg_catalog.pg_has_role(current_user, owner, 'USAGE')
    GROUP BY model, owner
)
SELECT coalesce(t.model, c.model) AS model, coalesce(t.role, c.role)::regrole AS role,
       coalesce(t.jobs, 0) AS jobs, coalesce(t.succeeded_jobs, 0) AS succeeded_jobs,
       coalesce(t.trained_tokens, 0)::bigint AS trained_tokens,
       round(coalesce(t.training_seconds, 0)::numeric, 1) AS training_seconds,
       coalesce(c.calls, 0) AS completion_calls,
       coalesce(c.prompt_tokens, 0) AS prompt_tokens, coalesce(c.completion_tokens, 0) AS completion_tokens,
       round(coalesce(c.seconds, 0)::numeric, 1) AS completion_seconds
FROM training t
FULL JOIN distill.completion_usage() c ON c.model = t.model AND c.role = t.role
ORDER BY 1, 2;


-- try_complete: complete(), but NULL where complete() would raise an error (Cortex's TRY_COMPLETE).
-- PL/pgSQL's exception block runs the call in a subtransaction, which is what makes catching any
-- error safe; query cancel and termination still stop it (WHEN OTHERS does not catch those).
-- Subtransactions cannot run in parallel mode, hence PARALLEL UNSAFE (the default).
CREATE FUNCTION distill.try_complete(model text, prompt text) RETURNS text
LANGUAGE plpgsql VOLATILE STRICT AS $$
BEGIN
    RETURN distill.complete(model, prompt);
EXCEPTION WHEN OTHERS THEN
    RETURN NULL;
END $$;

CREATE FUNCTION distill.try_complete(model text, prompt text, options jsonb) RETURNS text
LANGUAGE plpgsql VOLATILE STRICT AS $$
BEGIN
    RETURN distill.complete(model, prompt, options);
EXCEPTION WHEN OTHERS THEN
    RETURN NULL;
END $$;

CREATE FUNCTION distill.try_complete(model text, messages jsonb, options jsonb) RETURNS jsonb
LANGUAGE plpgsql VOLATILE STRICT AS $$
BEGIN
    RETURN distill.complete(model, messages, options);
EXCEPTION WHEN OTHERS THEN
    RETURN NULL;
END $$;

-- extract(model, text, NULL::some_type [, options]): a row of the composite type, filled by the model
-- under the type's JSON schema (extract_json); jsonb_populate_record makes the JSON the typed row.
-- SQL, not Rust, for the polymorphic anyelement in and out; everything schema-qualified.
CREATE FUNCTION distill.extract(model text, input text, template anyelement, options jsonb DEFAULT '{}')
RETURNS anyelement LANGUAGE sql VOLATILE AS $$
    SELECT pg_catalog.jsonb_populate_record(
        template, distill.extract_json(model, input, pg_catalog.pg_typeof(template)::pg_catalog.oid, options))
$$;

CREATE FUNCTION distill.try_extract(model text, input text, template anyelement, options jsonb DEFAULT '{}')
RETURNS anyelement LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    RETURN distill.extract(model, input, template, options);
EXCEPTION WHEN OTHERS THEN
    RETURN NULL;
END $$;
