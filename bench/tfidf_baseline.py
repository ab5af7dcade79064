"""Benchmark A's classical baseline: TF-IDF (word 1-2-grams + char 2-5-grams, sublinear tf) + logistic
regression, trained and tested on exactly the rows the fine-tuned model saw (the same stratified
subsample when one is used), and on the full training split for reference.

  python bench/tfidf_baseline.py --train train.csv --test test.csv [--train-per N] [--test-per M]

Rows are taken per label in file order (the first N of each label), as bench/finetune_sql.sh does.
Prints one JSON line: accuracy and macro-F1 on the subsample, and with the full training split.
"""
import argparse
import csv
import json
import time
from collections import defaultdict

from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score
from sklearn.pipeline import FeatureUnion, make_pipeline


def rows(path, per=None):
    seen, out = defaultdict(int), []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            seen[r["label"]] += 1
            if per is None or seen[r["label"]] <= per:
                out.append((r["text"], r["label"]))
    return out


def fit_score(train, test):
    started = time.time()
    model = make_pipeline(
        FeatureUnion([
            ("word", TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1)),
            ("char", TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, min_df=1)),
        ]),
        LogisticRegression(C=10.0, max_iter=2000),
    )
    model.fit([t for t, _ in train], [l for _, l in train])
    pred = model.predict([t for t, _ in test])
    gold = [l for _, l in test]
    return {"train_rows": len(train), "test_rows": len(test), "accuracy": accuracy_score(gold, pred),
            "macro_f1": f1_score(gold, pred, average="macro"), "seconds": time.time() - started}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--train", required=True)
    p.add_argument("--test", required=True)
    p.add_argument("--train-per", type=int)
    p.add_argument("--test-per", type=int)
    a = p.parse_args()
    test = rows(a.test, a.test_per)
    out = {"same_rows": fit_score(rows(a.train, a.train_per), test)}
    if a.train_per is not None:
        out["full_train"] = fit_score(rows(a.train), test)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
