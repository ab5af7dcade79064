"""The classification benchmark's rows: the 151 shipped tickets (train + test) repeated and shuffled
(seeded) to N rows, each with the quickstart's instruction prompt.

  python3 bench/make_ticket_rows.py N OUT_DIR   ->  OUT_DIR/rows.csv (row,id,label,prompt), OUT_DIR/prompts.json
"""
import csv
import json
import os
import random
import sys

INSTRUCTION = ("Classify this customer request into one of: Add new line, Closing account, Roaming fees, "
               "Slow data speed. Reply with the category only.\nRequest: ")


def main():
    n, out = int(sys.argv[1]), sys.argv[2]
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "support_tickets")
    tickets = []
    for name in ("train.csv", "test.csv"):
        with open(os.path.join(root, name), newline="") as f:
            tickets += [(r["id"], r["label"], INSTRUCTION + r["text"]) for r in csv.DictReader(f)]
    rows = [tickets[i % len(tickets)] for i in range(n)]
    random.Random(42).shuffle(rows)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "rows.csv"), "w", newline="") as f:
        w = csv.writer(f)
        for i, (tid, label, prompt) in enumerate(rows, 1):
            w.writerow([i, tid, label, prompt])
    with open(os.path.join(out, "prompts.json"), "w") as f:
        json.dump([p for _, _, p in rows], f)
    print(json.dumps({"rows": n, "distinct_prompts": len({p for _, _, p in rows})}))


if __name__ == "__main__":
    main()
