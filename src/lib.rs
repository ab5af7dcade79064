//! pg_distill: fine-tune small language models on rows of your tables and run them in SQL.
//!
//! This crate is the SQL layer only: each SQL function is a thin wrapper over `distill-engine`.

use pgrx::prelude::*;

mod adapter_io;
mod complete;
mod complete_rows;
mod endpoint_registry;
mod endpoints;
mod errors;
mod evaluate;
mod extract;
mod finetune;
mod guc;
mod job_display;
mod job_error;
mod model_access;
mod model_cache;
mod pg;
mod registry;
mod thread_budget;
mod training_job;
mod type_schema;
mod usage;
mod user_query;
mod worker;

::pgrx::pg_module_magic!(name, version);

pgrx::extension_sql_file!("../sql/registry.sql", name = "registry", bootstrap);
pgrx::extension_sql_file!(
    "../sql/views.sql",
    name = "views",
    requires = [
        "registry",
        job_display::progress_bar,
        job_display::sparkline_sql,
        usage::completion_usage,
        complete::complete,
        complete::complete_with_options,
        complete::complete_chat,
        extract::extract_json
    ]
);
pgrx::extension_sql_file!("../sql/finalize.sql", name = "finalize", finalize);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    guc::init();
    if pg::backend::preloading_libraries() {
        usage::init();
        thread_budget::init();
        worker::register();
    }
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    fn fixture(name: &str) -> serde_json::Value {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/");
        serde_json::from_str(&std::fs::read_to_string(format!("{path}{name}")).unwrap()).unwrap()
    }

    #[pg_test]
    fn greedy_completion_follows_llama_cpp_to_its_knife_edge() {
        // llama.cpp's top two at the 11th token are 0.0065 logit apart (engine/tests/generation_reference.rs).
        let f = fixture("smollm2_greedy_reference.json");
        let got = Spi::get_one_with_args::<String>(
            "SELECT distill.complete('smollm2-135m', $1, '{\"max_tokens\": 10}')",
            &[f["user_message"].as_str().unwrap().into()],
        );
        let got = got.unwrap().unwrap();
        assert_eq!(got, "The support ticket is a classic example of a \"");
        assert!(f["expected_greedy_output"].as_str().unwrap().starts_with(&got));
    }

    #[pg_test]
    fn model_is_loaded_once_per_backend() {
        crate::model_cache::clear();
        let n = Spi::get_one::<i64>(
            "SELECT count(distill.complete('smollm2-135m', 'Say yes.', '{\"max_tokens\": 1}')) FROM generate_series(1, 20)",
        );
        assert_eq!(n.unwrap(), Some(20));
        assert_eq!(crate::model_cache::loads(), 1);
    }

    #[pg_test]
    fn null_prompt_gives_null() {
        let got = Spi::get_one::<String>("SELECT distill.complete('smollm2-135m', NULL)");
        assert_eq!(got.unwrap(), None);
    }

    #[pg_test(error = "prompt is empty")]
    fn empty_prompt_is_an_error() {
        Spi::run("SELECT distill.complete('smollm2-135m', '   ')").unwrap();
    }

    #[pg_test]
    fn unknown_model_is_an_error() {
        // The directory is the installation's (pg_config --sharedir), derived rather than written out.
        let err = crate::model_cache::with_model("no-such-model", |_, _| Ok(())).unwrap_err().to_string();
        let dir = crate::guc::model_dir();
        assert!(dir.ends_with("pg_distill/models"), "{}", dir.display());
        assert_eq!(err, format!("model \"no-such-model\" not found in {}", dir.display()));
    }

    #[pg_test]
    fn progress_bar_and_sparkline() {
        use crate::job_display::{progress_bar, sparkline};
        assert_eq!(progress_bar(0.0), "[--------------------]   0%");
        assert_eq!(progress_bar(0.456), "[#########-----------]  45%");
        assert_eq!(progress_bar(2.0), "[####################] 100%");
        assert_eq!(sparkline(&[3.0, 2.0, 1.0, 1.0]).unwrap(), "█▅▁▁");
        assert_eq!(sparkline(&[0.5, 0.5]).unwrap(), "▄▄");
        assert_eq!(sparkline(&[]), None);
    }

    #[pg_test]
    fn version_names_the_engine() {
        let v = Spi::get_one::<String>("SELECT distill.version()").unwrap().unwrap();
        assert!(v.starts_with("pg_distill 0.1.0"), "{v}");
    }
}

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec!["shared_preload_libraries = 'pg_distill'"]
    }
}
