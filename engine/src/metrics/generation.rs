//! Text-generation metrics of replies against one or more reference completions, for
//! `distill.evaluate()`: ROUGE-1/2/L, BLEU and chrF, computed exactly as the packages everyone quotes
//! them from do, so that numbers here compare with published ones.
//!
//! - ROUGE: Google's `rouge-score` 0.1.2, `RougeScorer(["rouge1", "rouge2", "rougeL"],
//!   use_stemmer=False)`; tokenizer from `rouge_score/tokenize.py`, n-gram and LCS scores from
//!   `rouge_score/rouge_scorer.py`, several references by its `score_multi` (per rouge type, the
//!   reference with the best F1). The corpus value is the mean F1 over predictions.
//! - BLEU: `sacrebleu.corpus_bleu(hyps, refs)` 2.6.0 with its defaults (`sacrebleu/metrics/bleu.py`:
//!   13a tokenizer from `sacrebleu/tokenizers/tokenizer_13a.py` and `tokenizer_re.py`, order 4,
//!   `exp` smoothing, closest reference length with ties to the shorter); 0-100.
//! - chrF: `sacrebleu.corpus_chrf(hyps, refs)` defaults (`sacrebleu/metrics/chrf.py`: character
//!   orders 1-6, no word n-grams, beta 2, whitespace removed, `eps_smoothing=False`, i.e. the
//!   precision and recall averaged over the orders both sides have); 0-100.
//!
//! Written here: no crate reproduces rouge-score's and sacrebleu's tokenisation and smoothing.
//! tests/fixtures/generation_metrics.json holds the packages' own numbers for tricky and E2E NLG
//! inputs (tests/fixtures/make_generation_metrics.py); engine/tests/generation_metrics.rs checks
//! these functions against them to 1e-9.
//!
//! Texts are scored as given (the packages do not trim either; their tokenisers ignore surrounding
//! blanks). An item with no references is scored against one empty reference (sacrebleu cannot
//! score it at all): it counts as a prediction that matches nothing.

use std::collections::HashMap;
use std::hash::Hash;

use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GenerationMetrics {
    /// Mean ROUGE-1 F1 over predictions, 0-1.
    pub rouge1: f64,
    /// Mean ROUGE-2 F1 over predictions, 0-1.
    pub rouge2: f64,
    /// Mean ROUGE-L F1 over predictions, 0-1.
    #[serde(rename = "rougeL")]
    pub rouge_l: f64,
    /// Corpus BLEU, 0-100.
    pub bleu: f64,
    /// Corpus chrF, 0-100.
    pub chrf: f64,
    pub predictions: usize,
}

/// ROUGE F1s of one prediction against its best reference per rouge type.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RougeScores {
    pub rouge1: f64,
    pub rouge2: f64,
    #[serde(rename = "rougeL")]
    pub rouge_l: f64,
}

/// Metrics of `(prediction, references)` items.
pub fn generation_metrics<'a>(items: &[(&'a str, Vec<&'a str>)]) -> GenerationMetrics {
    let mut sums = [0.0f64; 3];
    for (prediction, references) in items {
        let s = rouge(prediction, references);
        // Summed in item order, as the fixture's Python mean is.
        sums[0] += s.rouge1;
        sums[1] += s.rouge2;
        sums[2] += s.rouge_l;
    }
    let mean = |s: f64| if items.is_empty() { 0.0 } else { s / items.len() as f64 };
    GenerationMetrics {
        rouge1: mean(sums[0]),
        rouge2: mean(sums[1]),
        rouge_l: mean(sums[2]),
        bleu: corpus_bleu(items),
        chrf: corpus_chrf(items),
        predictions: items.len(),
    }
}

/// One item per distinct prompt of `(prompt, expected, predicted)` rows, in order of first
/// appearance: the first row's prediction, with every expected completion of that prompt as its
/// references (how the E2E NLG challenge scored several references per meaning representation).
pub fn group_references<'a>(
    rows: impl IntoIterator<Item = (&'a str, &'a str, &'a str)>,
) -> Vec<(&'a str, Vec<&'a str>)> {
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut items: Vec<(&str, Vec<&str>)> = Vec::new();
    for (prompt, expected, predicted) in rows {
        let i = *index.entry(prompt).or_insert_with(|| {
            items.push((predicted, Vec::new()));
            items.len() - 1
        });
        items[i].1.push(expected);
    }
    items
}

/// No references scores as one empty reference (see the module doc).
fn references<'r, 'a>(refs: &'r [&'a str]) -> &'r [&'a str] {
    if refs.is_empty() {
        &[""]
    } else {
        refs
    }
}

/// Python's `str.isspace()`, what `str.split()` and `str.rstrip()` use: Unicode White_Space plus the
/// four ASCII separators U+001C-U+001F (bidirectional class B/S), which Rust's `char::is_whitespace`
/// leaves out.
fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

fn counts<K: Eq + Hash>(keys: impl IntoIterator<Item = K>) -> HashMap<K, usize> {
    let mut m = HashMap::new();
    for k in keys {
        *m.entry(k).or_insert(0) += 1;
    }
    m
}

// ---- ROUGE (rouge-score) ----

/// rouge-score's default tokenizer without stemming: lowercase (Python's `str.lower`), every run of
/// characters other than `[a-z0-9]` separates tokens. Non-ASCII letters are separators ("café" ->
/// "caf"), except where lowercasing yields ASCII ("İ" -> "i" + U+0307, Kelvin sign -> "k").
pub fn rouge_tokenize(text: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    let mut token = String::new();
    // Per character: Python's only context-dependent lowercasing (final sigma) never yields ASCII.
    for c in text.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            token.push(c);
        } else if !token.is_empty() {
            tokens.push(std::mem::take(&mut token));
        }
    }
    if !token.is_empty() {
        tokens.push(token);
    }
    tokens
}

/// `rouge_score.scoring.fmeasure`.
fn fmeasure(precision: f64, recall: f64) -> f64 {
    if precision + recall > 0.0 {
        2.0 * precision * recall / (precision + recall)
    } else {
        0.0
    }
}

/// `_score_ngrams`: clipped n-gram overlap; an empty side counts as one n-gram (`max(count, 1)`).
fn rouge_n(target: &[String], prediction: &[String], n: usize) -> f64 {
    let t = counts(target.windows(n));
    let p = counts(prediction.windows(n));
    let overlap: usize = t.iter().map(|(g, &c)| c.min(p.get(g).copied().unwrap_or(0))).sum();
    let (t_total, p_total) = (t.values().sum::<usize>(), p.values().sum::<usize>());
    fmeasure(overlap as f64 / p_total.max(1) as f64, overlap as f64 / t_total.max(1) as f64)
}

/// `_score_lcs`: longest common subsequence of tokens; 0 when either side is empty.
fn rouge_lcs(target: &[String], prediction: &[String]) -> f64 {
    if target.is_empty() || prediction.is_empty() {
        return 0.0;
    }
    // The package's full table, kept one row at a time.
    let mut prev = vec![0usize; prediction.len() + 1];
    let mut row = prev.clone();
    for t in target {
        for (j, p) in prediction.iter().enumerate() {
            row[j + 1] = if t == p { prev[j] + 1 } else { prev[j + 1].max(row[j]) };
        }
        std::mem::swap(&mut prev, &mut row);
    }
    let lcs = prev[prediction.len()] as f64;
    fmeasure(lcs / prediction.len() as f64, lcs / target.len() as f64)
}

/// ROUGE F1s of `prediction` as `RougeScorer.score_multi(references, prediction)` gives them: per
/// rouge type, the best F1 over the references.
/// [`rouge_tokenize`]'s token count without building the tokens (runs of characters that lowercase
/// to ASCII letters or digits).
fn token_count(text: &str) -> u64 {
    let mut count = 0;
    let mut in_token = false;
    for c in text.chars().flat_map(char::to_lowercase) {
        let alnum = c.is_ascii_lowercase() || c.is_ascii_digit();
        count += (alnum && !in_token) as u64;
        in_token = alnum;
    }
    count
}

/// ROUGE-L's cost: the sum over predictions and their references of the product of their token
/// counts (its longest-common-subsequence table), the one part of these metrics that is not linear.
/// Callers bound it before scoring (`evaluate()` refuses inputs above a limit), since the scoring
/// itself cannot be cancelled midway.
pub fn rouge_l_work(items: &[(&str, Vec<&str>)]) -> u64 {
    items
        .iter()
        .map(|(prediction, refs)| {
            let p = token_count(prediction);
            references(refs).iter().map(|r| p * token_count(r)).sum::<u64>()
        })
        .sum()
}

pub fn rouge(prediction: &str, references: &[&str]) -> RougeScores {
    let pred = rouge_tokenize(prediction);
    let mut best = RougeScores { rouge1: 0.0, rouge2: 0.0, rouge_l: 0.0 };
    for r in self::references(references) {
        let target = rouge_tokenize(r);
        best.rouge1 = best.rouge1.max(rouge_n(&target, &pred, 1));
        best.rouge2 = best.rouge2.max(rouge_n(&target, &pred, 2));
        best.rouge_l = best.rouge_l.max(rouge_lcs(&target, &pred));
    }
    best
}

// ---- BLEU (sacrebleu) ----

const BLEU_ORDER: usize = 4;

/// Characters the 13a tokenizer's first rule sets apart: its class `[\{-\~\[-\` -\&\(-\+\:-\@\/]`.
fn is_13a_symbol(c: char) -> bool {
    matches!(c, '{'..='~' | '['..='`' | ' '..='&' | '('..='+' | ':'..='@' | '/')
}

/// `re.sub` of a two-character pattern `(A)(B)`: leftmost, non-overlapping matches, scanning on
/// after each; `replace` writes the two matched characters.
fn sub_pairs(
    s: &[char],
    a: impl Fn(char) -> bool,
    b: impl Fn(char) -> bool,
    replace: impl Fn(&mut Vec<char>, char, char),
) -> Vec<char> {
    let mut out = Vec::with_capacity(s.len() + s.len() / 2);
    let mut i = 0;
    while i < s.len() {
        if i + 1 < s.len() && a(s[i]) && b(s[i + 1]) {
            replace(&mut out, s[i], s[i + 1]);
            i += 2;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    out
}

/// sacrebleu's `13a` tokenizer (mteval-v13a) applied to a segment as BLEU does: `rstrip`, then
/// `Tokenizer13a` (`<skipped>` and `-\n` removed, newlines to spaces, four HTML entities unescaped),
/// then `TokenizerRegexp`'s four rules, then split on whitespace.
pub fn tokenize_13a(segment: &str) -> Vec<String> {
    let mut line = segment.trim_end_matches(is_py_space).replace("<skipped>", "").replace("-\n", "").replace('\n', " ");
    if line.contains('&') {
        line = line.replace("&quot;", "\"").replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">");
    }
    // Rule 1: symbols set apart (the package pads the line with a space each side first; the
    // padding only ever becomes whitespace).
    let mut chars = Vec::with_capacity(line.len() + 2);
    for c in format!(" {line} ").chars() {
        if is_13a_symbol(c) {
            chars.extend([' ', c, ' ']);
        } else {
            chars.push(c);
        }
    }
    let digit = |c: char| c.is_ascii_digit();
    let not_digit = |c: char| !c.is_ascii_digit();
    let period_comma = |c: char| c == '.' || c == ',';
    // Rule 2: period and comma unless preceded by a digit: `\1 \2 `.
    let chars = sub_pairs(&chars, not_digit, period_comma, |o, x, y| o.extend([x, ' ', y, ' ']));
    // Rule 3: period and comma unless followed by a digit: ` \1 \2`.
    let chars = sub_pairs(&chars, period_comma, not_digit, |o, x, y| o.extend([' ', x, ' ', y]));
    // Rule 4: dash after a digit: `\1 \2 `.
    let chars = sub_pairs(&chars, digit, |c| c == '-', |o, x, y| o.extend([x, ' ', y, ' ']));
    chars.into_iter().collect::<String>().split(is_py_space).filter(|t| !t.is_empty()).map(str::to_string).collect()
}

/// One segment's sufficient statistics, as `BLEU._compute_segment_statistics` returns them.
#[derive(Default)]
struct BleuStats {
    hyp_len: usize,
    ref_len: usize,
    correct: [usize; BLEU_ORDER],
    total: [usize; BLEU_ORDER],
}

fn word_ngrams(tokens: &[String]) -> HashMap<&[String], usize> {
    counts((1..=BLEU_ORDER).flat_map(|n| tokens.windows(n)))
}

fn bleu_segment(hypothesis: &str, references: &[&str]) -> BleuStats {
    let refs: Vec<Vec<String>> = references.iter().map(|r| tokenize_13a(r)).collect();
    // Each n-gram's count: its most in any one reference.
    let mut ref_ngrams: HashMap<&[String], usize> = HashMap::new();
    for r in &refs {
        for (g, c) in word_ngrams(r) {
            let e = ref_ngrams.entry(g).or_insert(0);
            *e = (*e).max(c);
        }
    }
    let hyp = tokenize_13a(hypothesis);
    // `_get_closest_ref_len`: the first closest in reference order, a shorter one winning a tie.
    let mut closest: Option<(usize, usize)> = None; // (diff, len)
    for r in &refs {
        let diff = hyp.len().abs_diff(r.len());
        closest = match closest {
            Some((d, l)) if diff > d || (diff == d && r.len() >= l) => Some((d, l)),
            _ => Some((diff, r.len())),
        };
    }
    let mut stats = BleuStats { hyp_len: hyp.len(), ref_len: closest.map_or(0, |(_, l)| l), ..Default::default() };
    for (g, c) in word_ngrams(&hyp) {
        stats.total[g.len() - 1] += c;
        stats.correct[g.len() - 1] += c.min(ref_ngrams.get(g).copied().unwrap_or(0));
    }
    stats
}

/// `sacrebleu.utils.my_log`: log, with log(0) floored.
fn my_log(x: f64) -> f64 {
    if x == 0.0 {
        -9999999999.0
    } else {
        x.ln()
    }
}

/// `BLEU.compute_bleu` with `smooth_method="exp"` and no effective order.
fn compute_bleu(s: &BleuStats) -> f64 {
    let bp = if s.hyp_len < s.ref_len {
        if s.hyp_len > 0 {
            (1.0 - s.ref_len as f64 / s.hyp_len as f64).exp()
        } else {
            0.0
        }
    } else {
        1.0
    };
    if s.correct.iter().all(|&c| c == 0) {
        return 0.0;
    }
    let mut precisions = [0.0f64; BLEU_ORDER];
    let mut smooth = 1.0f64;
    for (n, precision) in precisions.iter_mut().enumerate() {
        // An order with no hypothesis n-grams stops the loop: it and the higher ones keep precision
        // 0, whose floored log makes the score 0.
        if s.total[n] == 0 {
            break;
        }
        *precision = if s.correct[n] == 0 {
            smooth *= 2.0;
            100.0 / (smooth * s.total[n] as f64)
        } else {
            100.0 * s.correct[n] as f64 / s.total[n] as f64
        };
    }
    let log_sum = precisions.iter().fold(0.0, |acc, &p| acc + my_log(p));
    bp * (log_sum / BLEU_ORDER as f64).exp()
}

/// `sacrebleu.corpus_bleu` of the items' predictions against their references, 0-100; 0 without items.
pub fn corpus_bleu(items: &[(&str, Vec<&str>)]) -> f64 {
    let mut sum = BleuStats::default();
    for (prediction, refs) in items {
        let s = bleu_segment(prediction, references(refs));
        sum.hyp_len += s.hyp_len;
        sum.ref_len += s.ref_len;
        for (total, n) in sum.correct.iter_mut().zip(s.correct).chain(sum.total.iter_mut().zip(s.total)) {
            *total += n;
        }
    }
    compute_bleu(&sum)
}

// ---- chrF (sacrebleu) ----

const CHRF_ORDER: usize = 6;
const CHRF_BETA: f64 = 2.0;

/// Per order 1..=6: (hypothesis n-grams, reference n-grams, matches), `CHRF._get_match_statistics`.
type ChrfStats = [[usize; 3]; CHRF_ORDER];

/// `extract_all_char_ngrams` with whitespace removed: n-grams of code points.
fn char_ngrams(chars: &[char]) -> Vec<HashMap<&[char], usize>> {
    (1..=CHRF_ORDER).map(|n| counts(chars.windows(n))).collect()
}

/// `CHRF._compute_f_score` with `eps_smoothing=False`: precision and recall averaged over the orders
/// where both sides have n-grams, then F-beta.
fn chrf_score(stats: &ChrfStats) -> f64 {
    let (mut avg_prec, mut avg_rec, mut orders) = (0.0f64, 0.0f64, 0usize);
    for &[n_hyp, n_ref, n_match] in stats {
        if n_hyp > 0 && n_ref > 0 {
            avg_prec += n_match as f64 / n_hyp as f64;
            avg_rec += n_match as f64 / n_ref as f64;
            orders += 1;
        }
    }
    if orders == 0 {
        return 0.0;
    }
    avg_prec /= orders as f64;
    avg_rec /= orders as f64;
    if avg_prec + avg_rec == 0.0 {
        return 0.0;
    }
    let factor = CHRF_BETA * CHRF_BETA;
    let mut score = (1.0 + factor) * avg_prec * avg_rec;
    score /= factor * avg_prec + avg_rec;
    100.0 * score
}

/// `CHRF._compute_segment_statistics`: the statistics against the reference with the best chrF (the
/// first of equals).
fn chrf_segment(hypothesis: &str, references: &[&str]) -> ChrfStats {
    let strip = |s: &str| -> Vec<char> { s.chars().filter(|&c| !is_py_space(c)).collect() };
    let hyp_chars = strip(hypothesis);
    let hyp = char_ngrams(&hyp_chars);
    let mut best: (f64, ChrfStats) = (-1.0, [[0; 3]; CHRF_ORDER]);
    for r in references {
        let ref_chars = strip(r);
        let refs = char_ngrams(&ref_chars);
        let mut stats: ChrfStats = [[0; 3]; CHRF_ORDER];
        for (n, (h, r)) in hyp.iter().zip(&refs).enumerate() {
            let matches: usize = h.iter().map(|(g, &c)| c.min(r.get(g).copied().unwrap_or(0))).sum();
            // The package counts no hypothesis n-grams where the reference has none of this order.
            let n_hyp = if r.is_empty() { 0 } else { h.values().sum() };
            stats[n] = [n_hyp, r.values().sum(), matches];
        }
        let f = chrf_score(&stats);
        if f > best.0 {
            best = (f, stats);
        }
    }
    best.1
}

/// `sacrebleu.corpus_chrf` of the items' predictions against their references, 0-100; 0 without items.
pub fn corpus_chrf(items: &[(&str, Vec<&str>)]) -> f64 {
    let mut sum: ChrfStats = [[0; 3]; CHRF_ORDER];
    for (prediction, refs) in items {
        let s = chrf_segment(prediction, references(refs));
        for (total, s) in sum.iter_mut().zip(s) {
            for (t, n) in total.iter_mut().zip(s) {
                *t += n;
            }
        }
    }
    chrf_score(&sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenizers() {
        assert_eq!(rouge_tokenize("It's £20-25 at the Café!"), ["it", "s", "20", "25", "at", "the", "caf"]);
        assert_eq!(rouge_tokenize("\u{130}x \u{212a}"), ["i", "x", "k"]);
        // Period/comma kept inside numbers, dash split after a digit, symbols apart, apostrophe kept.
        assert_eq!(
            tokenize_13a("It's 1,000.5 (2019-20), e.g. x."),
            ["It's", "1,000.5", "(", "2019", "-", "20", ")", ",", "e", ".", "g", ".", "x", "."]
        );
        assert_eq!(tokenize_13a("a&amp;b\u{1c}c <skipped>well-\nknown  "), ["a", "&", "b", "c", "wellknown"]);
    }

    #[test]
    fn hand_computed() {
        // Prediction "the cat the" vs "the cat sat": unigrams 2/3 each way, bigram "the cat" 1/2,
        // LCS "the cat" 2/3.
        let s = rouge("the cat the", &["the cat sat"]);
        assert!((s.rouge1 - 2.0 / 3.0).abs() < 1e-15 && (s.rouge2 - 0.5).abs() < 1e-15);
        assert!((s.rouge_l - 2.0 / 3.0).abs() < 1e-15);
        // A perfect match of >= 4 tokens is 100; fewer than 4 tokens has no 4-grams: 0.
        let items = [("a b c d e", vec!["x", "a b c d e"])];
        // (sacrebleu too gives 100.00000000000004: exp(log(100)).)
        assert!((corpus_bleu(&items) - 100.0).abs() < 1e-12);
        assert_eq!(corpus_chrf(&items), 100.0);
        assert_eq!(corpus_bleu(&[("a b c", vec!["a b c"])]), 0.0);
        assert_eq!(generation_metrics(&[]).predictions, 0);
        // No references: scored as against "".
        let m = generation_metrics(&[("text", vec![])]);
        assert_eq!((m.rouge1, m.bleu, m.chrf), (0.0, 0.0, 0.0));
    }

    #[test]
    fn grouping_keeps_first_prediction_and_order() {
        let rows = [("p1", "a", "x"), ("p2", "b", "y"), ("p1", "c", "ignored")];
        assert_eq!(group_references(rows), vec![("x", vec!["a", "c"]), ("y", vec!["b"])]);
    }
}
