"""De-identification on planted PHI: recall and precision per type, per engine; false
positives on clinical text without identifiers; what the pass does to a classifier.

    .venv/bin/python benchmarks/deid_eval.py --notes 2000 --out benchmarks/deid_eval.json
    .venv/bin/python benchmarks/deid_eval.py --notes 3000 --write-folder runs/planted-notes

1. `--notes` synthetic notes (common/data/planted_phi.py: ICD-10-CM descriptions in note
   templates, identifiers from faker) through each engine; a planted span is removed only when
   every letter and digit of it is inside a replaced span; a replaced span is correct when it
   overlaps a planted one.
2. `--clean` ICD-10-CM leaf descriptions (no identifiers at all) through each engine: every
   span replaced there is a false positive (eponyms such as "Sjögren" are the usual ones).
3. A TF-IDF + logistic-regression classifier of the notes' chapter (80/20 split, seeded)
   trained and tested on the raw notes and on each engine's output: macro-F1 with and without
   the pass. The federated pipeline's own comparison is a simulation (benchmarks/deid_eval.md).
With `--write-folder DIR` it also writes the notes as a data folder for `fedssl simulate`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.data.deidentification import detect, replace_spans
from common.data.planted_phi import (
    PLANTED_TYPES,
    planted_notes,
    score,
    write_planted_folder,
)

ENGINES = ("presidio", "philter")


def engine_scores(notes, engine: str) -> tuple[dict, list[str]]:
    started = time.perf_counter()
    detect(["warm-up"], engine)
    loaded = time.perf_counter() - started
    started = time.perf_counter()
    found = detect([note.text for note in notes], engine)
    seconds = time.perf_counter() - started
    scores = score(notes, found)
    result = {
        "load_s": round(loaded, 1),
        "ms_per_note": round(1000 * seconds / len(notes), 2),
        "recall": {t: round(scores.recall(t), 4) for t in PLANTED_TYPES},
        "planted": scores.planted,
        "structured_recall": round(scores.structured_recall(), 4),
        "precision": round(scores.precision(), 4),
        "precision_by_type": {t: round(scores.precision(t), 4) for t in scores.detected},
        "detected": scores.detected,
        "recall_by_source": {k: [removed, planted] for k, (removed, planted)
                             in scores.by_source.items()},
    }
    return result, [replace_spans(n.text, f) for n, f in zip(notes, found, strict=True)]


def clean_false_positives(count: int, engine: str, seed: int) -> dict:
    from common.data.icd10_corpus import load_icd10_records

    texts = load_icd10_records().texts
    sample = [texts[i] for i in random.Random(seed).sample(range(len(texts)), count)]
    found = detect(sample, engine)
    spans = sum(len(f) for f in found)
    return {"records": count, "records_changed": sum(bool(f) for f in found), "spans": spans,
            "spans_per_1000_records": round(1000 * spans / count, 2)}


def macro_f1(texts: list[str], labels: list[int], seed: int) -> float:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score
    from sklearn.model_selection import train_test_split

    train_x, test_x, train_y, test_y = train_test_split(texts, labels, test_size=0.2,
                                                        random_state=seed)
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    model = LogisticRegression(max_iter=2000, C=10.0)
    model.fit(vectorizer.fit_transform(train_x), train_y)
    return float(f1_score(test_y, model.predict(vectorizer.transform(test_x)), average="macro"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--notes", type=int, default=2000)
    parser.add_argument("--clean", type=int, default=10000,
                        help="ICD-10-CM descriptions without identifiers (false positives)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--out", help="write the results here (JSON)")
    parser.add_argument("--write-folder", metavar="DIR",
                        help="also write the notes as a data folder (notes.jsonl)")
    args = parser.parse_args()

    notes, label_names = planted_notes(args.notes, seed=args.seed)
    if args.write_folder:
        write_planted_folder(notes, label_names, args.write_folder)
    labels = [note.label for note in notes]
    results = {
        "notes": args.notes, "seed": args.seed,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_average": os.getloadavg()},
        "engines": {},
        "tfidf_macro_f1": {"raw": round(macro_f1([n.text for n in notes], labels,
                                                 args.seed), 4)},
    }
    for engine in args.engines.split(","):
        scores, cleaned = engine_scores(notes, engine)
        scores["clean_icd10"] = clean_false_positives(args.clean, engine, args.seed)
        results["engines"][engine] = scores
        results["tfidf_macro_f1"][engine] = round(macro_f1(cleaned, labels, args.seed), 4)
        print(f"{engine}: recall {scores['recall']} precision {scores['precision']} "
              f"clean {scores['clean_icd10']} ({scores['ms_per_note']} ms/note)", flush=True)
    results["machine"]["load_average_end"] = os.getloadavg()
    print(json.dumps(results["tfidf_macro_f1"]))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
