//! `distill.complete_rows(model, sql [, options])`: a model over the `id` and `prompt` columns of a
//! query, streamed back as `(id, completion, error)` rows: how a teacher labels a table, and how a
//! student serves one.
//!
//! A local model decodes `batch_size` rows together (one weight pass serves every row's next token,
//! `distill_engine::infer::generation::generate_batch`), with the prefix cache as `complete()` uses
//! it; an endpoint gets `max_in_flight` requests at once. A row that fails (a prompt too long, a
//! reply that is not JSON, the server's 500 after its retries) has its `error` and no completion; the
//! run goes on. A NOTICE every few seconds tells rows done, rows/s and the time left.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use distill_engine::endpoint::{ChatRequest, Endpoint, InFlight};
use distill_engine::{Error, Message};
use pgrx::prelude::*;
use pgrx::JsonB;
use serde_json::Value;

use crate::complete::{check_model_name, Request};
use crate::errors::{invalid, OrReport};
use crate::model_cache::{self, with_model};
use crate::user_query::{self, IdPrompt};
use crate::{endpoints, guc, usage};

/// Rows decoded together by default: past 16, a decoding step's cost grows with the rows (the
/// weights are read once either way) and a wave waits longer for its slowest row.
const DEFAULT_BATCH: usize = 16;
/// Seconds between progress NOTICEs.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// (id, completion, error)
type Row = (Option<String>, Option<String>, Option<String>);

/// Options: those of `complete()`, plus `batch_size` (local models, 1 to 64, default 16) and
/// `max_in_flight` (endpoints, 1 to 64, default the endpoint's, 8).
#[pg_extern(volatile, parallel_unsafe)]
fn complete_rows(
    model: &str,
    sql: &str,
    options: default!(JsonB, "'{}'"),
) -> TableIterator<'static, (name!(id, Option<String>), name!(completion, Option<String>), name!(error, Option<String>))>
{
    check_model_name(model);
    let Value::Object(mut o) = options.0 else { invalid("options must be a JSON object, e.g. '{\"max_tokens\": 20}'") };
    let count = |o: &mut serde_json::Map<String, Value>, k: &str| -> Option<usize> {
        o.remove(k).map(|v| match v.as_u64() {
            Some(n @ 1..=64) => n as usize,
            _ => invalid(format!("{k} must be an integer from 1 to 64")),
        })
    };
    let batch_size = count(&mut o, "batch_size");
    let in_flight = count(&mut o, "max_in_flight");
    if o.get("scores") == Some(&Value::Bool(true)) {
        invalid("\"scores\" does not apply to complete_rows (it returns each row's reply as text)");
    }
    let request = Request::parse(JsonB(Value::Object(o))).for_model(model).into_owned();
    let endpoint = model_cache::endpoint(model).or_report();
    let mut budget = user_query::Budget::training();
    let rows = user_query::read_id_prompt("complete_rows query", sql, &mut budget);
    let limit = guc::max_input_bytes();
    let mut work = Vec::new();
    let mut done = VecDeque::new();
    for (i, r) in rows.into_iter().enumerate() {
        match &r.prompt {
            None => done.push_back((r.id, None, Some("the prompt is NULL".to_string()))),
            Some(p) if p.trim().is_empty() => done.push_back((r.id, None, Some("the prompt is empty".to_string()))),
            Some(p) if p.len() > limit => done.push_back((
                r.id,
                None,
                Some(format!("the prompt is {} bytes long, more than distill.max_input_bytes ({limit})", p.len())),
            )),
            Some(_) => work.push((i, r)),
        }
    }
    let total = work.len() + done.len();
    let progress = Progress { started: Instant::now(), last: Instant::now(), done: done.len(), total };
    let source = match endpoint {
        Some(ep) => {
            let n = in_flight.unwrap_or(ep.settings.max_in_flight);
            Source::Endpoint(Box::new(Remote::start(ep, &work, &request, n)))
        }
        None => Source::Local { rows: work.into(), batch: batch_size.unwrap_or(DEFAULT_BATCH) },
    };
    TableIterator::new(Rows { model: model.to_string(), request, source, done, progress })
}

struct Rows {
    model: String,
    request: Request,
    source: Source,
    /// Answered rows not yet returned.
    done: VecDeque<Row>,
    progress: Progress,
}

enum Source {
    Local { rows: VecDeque<(usize, IdPrompt)>, batch: usize },
    Endpoint(Box<Remote>),
}

struct Remote {
    batch: InFlight,
    /// Each request's row id (itself NULL when the query's id was); None once answered.
    ids: Vec<Option<Option<String>>>,
    endpoint: Endpoint,
    opts: distill_engine::GenerateOptions,
    choices: Option<Vec<String>>,
    /// When the previous answer came: each answer's usage is counted with the time since.
    since: Instant,
}

impl Remote {
    fn start(ep: Endpoint, work: &[(usize, IdPrompt)], request: &Request, n: usize) -> Self {
        let (opts, choices) = endpoints::plan(&ep, request).or_report();
        let requests = work
            .iter()
            .map(|(_, r)| ChatRequest {
                messages: vec![Message::user(r.prompt.as_deref().unwrap_or_default())],
                opts: opts.clone(),
            })
            .collect();
        let ids = work.iter().map(|(_, r)| Some(r.id.clone())).collect();
        let batch = endpoints::start(&ep, requests, n).or_report();
        Remote { batch, ids, endpoint: ep, opts, choices, since: Instant::now() }
    }
}

struct Progress {
    started: Instant,
    last: Instant,
    done: usize,
    total: usize,
}

impl Progress {
    fn tick(&mut self, rows: usize) {
        self.done += rows;
        if self.last.elapsed() >= PROGRESS_EVERY && self.done < self.total {
            self.last = Instant::now();
            let secs = self.started.elapsed().as_secs_f64();
            let rate = self.done as f64 / secs.max(1e-9);
            let eta = (self.total - self.done) as f64 / rate.max(1e-9);
            pgrx::notice!(
                "complete_rows: {}/{} rows, {rate:.1} rows/s, about {:.0} s left",
                self.done,
                self.total,
                eta
            );
        }
    }
}

impl Iterator for Rows {
    type Item = Row;

    fn next(&mut self) -> Option<Row> {
        if let Some(r) = self.done.pop_front() {
            return Some(r);
        }
        match &mut self.source {
            Source::Local { rows, batch } => {
                if rows.is_empty() {
                    return None;
                }
                let wave: Vec<(usize, IdPrompt)> = rows.drain(..(*batch).min(rows.len())).collect();
                let answers = local_wave(&self.model, &self.request, &wave);
                self.progress.tick(wave.len());
                self.done.extend(wave.into_iter().zip(answers).map(|((_, r), a)| match a {
                    Ok(text) => (r.id, Some(text), None),
                    Err(e) => (r.id, None, Some(e.to_string())),
                }));
            }
            Source::Endpoint(remote) => {
                let Some((index, answer)) = endpoints::wait(&mut remote.batch) else {
                    // Every thread gone with rows unanswered (only if one panicked): those rows say so
                    // rather than vanish.
                    let lost = remote.ids.iter_mut().filter_map(Option::take);
                    self.done.extend(lost.map(|id| (id, None, Some("the request was lost (its thread ended)".into()))));
                    return self.done.pop_front();
                };
                let id = remote.ids[index].take().flatten();
                let row = match answer {
                    Ok((reply, _)) => {
                        usage::record(
                            &self.model,
                            reply.prompt_tokens,
                            reply.completion_tokens,
                            remote.since.elapsed(),
                        );
                        remote.since = Instant::now();
                        match endpoints::check_reply(
                            &remote.endpoint,
                            reply.text,
                            remote.choices.as_deref(),
                            &remote.opts,
                        ) {
                            Ok(text) => (id, Some(text), None),
                            Err(e) => (id, None, Some(e.to_string())),
                        }
                    }
                    Err(Error::Interrupted) => {
                        pgrx::check_for_interrupts!();
                        (id, None, Some("interrupted".into()))
                    }
                    Err(e) => (id, None, Some(e.to_string())),
                };
                self.progress.tick(1);
                self.done.push_back(row);
            }
        }
        self.done.pop_front()
    }
}

/// One wave of rows on the local model: free replies decoded together, constrained ones one by one.
fn local_wave(model: &str, request: &Request, wave: &[(usize, IdPrompt)]) -> Vec<Result<String, Error>> {
    let started = Instant::now();
    let conversations: Vec<Vec<Message>> =
        wave.iter().map(|(_, r)| vec![Message::user(r.prompt.as_deref().unwrap_or_default())]).collect();
    let out: Vec<Result<(String, usize, usize), Error>> = match request {
        Request::Generate(opts) | Request::ModelDefault { opts, .. } => {
            with_model(model, |m, a| m.chat_batch(&conversations, opts, a))
                .or_report()
                .into_iter()
                .map(|g| g.map(|g| (g.text, g.prompt_tokens, g.tokens.len())))
                .collect()
        }
        Request::Choose { choices, scores } => conversations
            .iter()
            .map(|c| {
                // with_model raises a pending cancel itself.
                with_model(model, |m, a| m.choose_chat(c, choices, *scores, a))
                    .map(|c| (c.text, c.prompt_tokens, c.steps))
            })
            .collect(),
    };
    // One usage entry per row, the wave's time shared out.
    let share = started.elapsed() / wave.len().max(1) as u32;
    out.into_iter()
        .map(|r| {
            r.map(|(text, prompt_tokens, completion_tokens)| {
                usage::record(model, prompt_tokens, completion_tokens, share);
                text
            })
        })
        .collect()
}
