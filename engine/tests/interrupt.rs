//! Cancelling engine work: `threads::run_watched` turns the caller's `stop()` (a backend's pending
//! cancel) into an interrupt that generation and choice scoring see between forward passes.
//! The interrupt flag is process-wide, so these tests take turns.
mod common;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use distill_engine::{interrupt, threads, Error, GenerateOptions, TextModel, WeightFormat};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn model() -> &'static TextModel {
    static M: std::sync::OnceLock<TextModel> = std::sync::OnceLock::new();
    M.get_or_init(|| common::smollm2_with(WeightFormat::Q8_0))
}

/// True once `after` has passed since the first call.
fn stop_after(after: Duration) -> impl FnMut() -> bool {
    let start = Instant::now();
    move || start.elapsed() >= after
}

#[test]
fn stop_interrupts_work_and_the_flag_is_cleared() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let started = Instant::now();
    let result = threads::run_watched(
        || -> distill_engine::Result<()> {
            loop {
                interrupt::check()?;
                std::thread::sleep(Duration::from_millis(1));
            }
        },
        stop_after(Duration::from_millis(100)),
    );
    let took = started.elapsed();
    assert!(matches!(result, Err(Error::Interrupted)), "{result:?}");
    assert!(took >= Duration::from_millis(100) && took < Duration::from_millis(500), "{took:?}");
    assert!(!interrupt::requested(), "cleared on return");
    assert_eq!(Error::Interrupted.to_string(), "interrupted");
}

#[test]
fn fast_work_returns_at_once() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // An interrupt left over from before does not reach the next call.
    interrupt::request();
    let mut asked = 0;
    let started = Instant::now();
    let value = threads::run_watched(
        || interrupt::check().map(|_| 42),
        || {
            asked += 1;
            true
        },
    );
    assert_eq!(value.unwrap(), 42);
    // Done before the first 50 ms wait ran out: no polling delay, and `stop` never asked.
    assert!(started.elapsed() < Duration::from_millis(50), "{:?}", started.elapsed());
    assert_eq!(asked, 0);
    assert!(!interrupt::requested());

    // The work runs on another thread and may use a rayon pool inside it.
    let pool = threads::pool(2).unwrap();
    let caller = std::thread::current().id();
    let (sum, elsewhere) = threads::run_watched(
        || {
            let sum = pool.install(|| {
                use rayon::prelude::*;
                (1..=1000u64).into_par_iter().sum::<u64>()
            });
            (sum, std::thread::current().id() != caller)
        },
        || false,
    );
    assert_eq!((sum, elsewhere), (500500, true));
}

#[test]
fn a_panic_in_the_work_reaches_the_caller() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let caught = std::panic::catch_unwind(|| threads::run_watched(|| -> u32 { panic!("boom") }, || false));
    let message = caught.unwrap_err().downcast::<&str>().map(|s| *s).unwrap_or_default();
    assert_eq!(message, "boom");
}

/// Generation checks before its prefill and before every token; a stop while it runs ends it early.
#[test]
fn generation_is_interruptible() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let m = model();
    let opts = GenerateOptions { max_tokens: 120, ..Default::default() };
    let prompt = "Write a long story about a dragon who learns to bake bread.";
    interrupt::request();
    assert!(matches!(m.complete(prompt, &opts), Err(Error::Interrupted)));
    interrupt::clear();

    let started = Instant::now();
    let whole = m.complete(prompt, &opts).unwrap();
    let uninterrupted = started.elapsed();
    // The run to cut short must outlast the first stop (after one 50 ms wait) several times over.
    assert!(
        whole.tokens.len() == 120 && uninterrupted > Duration::from_millis(300),
        "{} tokens in {uninterrupted:?}",
        whole.tokens.len()
    );
    let started = Instant::now();
    let cut = threads::run_watched(|| m.complete(prompt, &opts), || true);
    assert!(matches!(cut, Err(Error::Interrupted)), "{cut:?}");
    assert!(started.elapsed() < uninterrupted / 2, "{:?} of {uninterrupted:?}", started.elapsed());
}

/// Choices check before their prefill and before every forward pass, with scores and without.
#[test]
fn choices_are_interruptible() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let m = model();
    let labels: Vec<String> = ["Add new line", "Roaming fees"].map(String::from).into();
    interrupt::request();
    for scores in [false, true] {
        assert!(matches!(m.choose_with("Roaming charges?", &labels, scores, None), Err(Error::Interrupted)));
    }
    interrupt::clear();

    // Two long choices that part only at their end: ~120 forward passes either way.
    let long = "Roaming fees on the last bill are wrong; check them. ".repeat(10);
    let choices = vec![format!("{long}Refund."), format!("{long}Escalate.")];
    for scores in [false, true] {
        let started = Instant::now();
        let whole = m.choose_with("Roaming charges?", &choices, scores, None).unwrap();
        let uninterrupted = started.elapsed();
        assert!(
            whole.steps > 100 && uninterrupted > Duration::from_millis(300),
            "{} steps in {uninterrupted:?}",
            whole.steps
        );
        let started = Instant::now();
        let cut = threads::run_watched(|| m.choose_with("Roaming charges?", &choices, scores, None), || true);
        assert!(matches!(cut, Err(Error::Interrupted)), "scores {scores}: {cut:?}");
        assert!(started.elapsed() < uninterrupted / 2, "{:?} of {uninterrupted:?}", started.elapsed());
    }
}

/// Rows of `reply_budget` are counted until an interrupt.
#[test]
fn reply_budget_is_interruptible() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let m = model();
    assert_eq!(
        distill_engine::metrics::reply_budget(m, ["ab", "abc def"]).unwrap(),
        m.count_tokens("abc def").unwrap() + 16
    );
    interrupt::request();
    let r = distill_engine::metrics::reply_budget(m, ["ab"]);
    interrupt::clear();
    assert!(matches!(r, Err(Error::Interrupted)), "{r:?}");
}
