"""How far do shape/function features alone take disease classification on ACDC? (5-fold CV)

The ``disease-cls`` features (:data:`cmrfm.clinical.features.FEATURE_NAMES`: log volumes, EFs, mass
ratios, RV/LV ratio, wall thickness) are computed from the manual ED/ES labels and, from
``--features-file``, from out-of-fold *predicted* masks (``benchmarks/analyze_acdc_cv.py`` writes
``predicted_features.csv``). Two small classifiers are cross-validated on the same patient-level
folds ``cmrfm finetune --task disease-cls`` uses: nearest centroid on standardised features, and
multinomial logistic regression (L2, full-batch L-BFGS). Features are standardised with the
training folds' statistics only.

    python benchmarks/disease_features_cv.py \\
        --features-file runs/analyze_acdc_cv/predicted_features.csv --write
"""

from __future__ import annotations

import argparse
import platform
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from results import update_section

from cmrfm import metrics
from cmrfm.engine.finetune import FinetuneConfig, build_task, split_subjects
from cmrfm.tasks.disease_cls import GROUPS, fit_logistic, read_feature_table


def label_features() -> tuple[dict[str, np.ndarray], object]:
    """Manual-label features per subject, and the task data (subjects, groups, splits)."""
    data = build_task("disease-cls", {"features": "labels"}).load_data()
    dataset = data.make_dataset(data.subjects, False)
    features = {}
    for i in range(len(dataset)):
        item = dataset[i]
        features[item["subject"]] = np.asarray(item["features"], np.float64)
    return features, data


def nearest_centroid(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray) -> np.ndarray:
    """Class of the nearest class mean (Euclidean, standardised features)."""
    centroids = np.stack([x_train[y_train == c].mean(axis=0) for c in range(len(GROUPS))])
    return np.argmin(((x_test[:, None, :] - centroids[None]) ** 2).sum(-1), axis=1)


def logistic_regression(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, l2: float = 1e-2
) -> np.ndarray:
    """Multinomial logistic regression (L2, full-batch L-BFGS: ``disease-cls solver=lbfgs``); classes."""
    weight, bias = fit_logistic(x_train, y_train, len(GROUPS), l2)
    return (np.asarray(x_test, np.float64) @ weight + bias).argmax(axis=1)


HEADING = "Disease classification from shape/function features (benchmarks/disease_features_cv.py)"
CLASSIFIERS = {"nearest centroid": nearest_centroid, "logistic regression": logistic_regression}


def cross_validate(
    data, features: dict[str, np.ndarray], folds: int, seed: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per classifier: (true, predicted) class of every patient, each predicted by its held-out fold."""
    group = dict(zip(data.subjects, data.strata, strict=True))
    out: dict[str, tuple[list[int], list[int]]] = {name: ([], []) for name in CLASSIFIERS}
    for fold in range(folds):
        cfg = FinetuneConfig(task="disease-cls", folds=folds, fold=fold, seed=seed)
        train, test = split_subjects(data, cfg)
        x_train = np.stack([features[s] for s in train])
        x_test = np.stack([features[s] for s in test])
        mean, std = x_train.mean(axis=0), x_train.std(axis=0) + 1e-8  # training folds only
        x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
        y_train = np.array([GROUPS.index(group[s]) for s in train])
        y_test = [GROUPS.index(group[s]) for s in test]
        for name, classify in CLASSIFIERS.items():
            out[name][0].extend(y_test)
            out[name][1].extend(classify(x_train, y_train, x_test).tolist())
    return {name: (np.array(t), np.array(p)) for name, (t, p) in out.items()}


def confusion_text(y: np.ndarray, pred: np.ndarray) -> str:
    """A markdown confusion matrix (rows: truth, columns: prediction)."""
    matrix = metrics.confusion_matrix(y, pred, len(GROUPS))
    lines = ["| truth \\ predicted | " + " | ".join(GROUPS) + " |", "|---|" + "---|" * len(GROUPS)]
    for g, row in zip(GROUPS, matrix, strict=True):
        lines.append(f"| {g} | " + " | ".join(str(int(v)) for v in row) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    """Command line entry."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--features-file", type=Path, default=None, help="predicted_features.csv")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write", action="store_true", help="rewrite this section of RESULTS.md")
    args = parser.parse_args(argv)
    from_labels, data = label_features()
    subjects = data.subjects
    sources = {"manual labels": from_labels}
    if args.features_file is not None:
        predicted = read_feature_table(args.features_file)
        missing = sorted(set(subjects) - set(predicted))
        if missing:
            raise SystemExit(f"{args.features_file}: no row for {len(missing)} patients: {missing[:3]}")
        sources["predicted masks (out-of-fold sax-seg)"] = {s: predicted[s].astype(float) for s in subjects}
    lines = [
        f"Machine: {platform.processor() or platform.machine()}; date {datetime.now(UTC):%Y-%m-%d}. "
        f"Command: `python benchmarks/disease_features_cv.py"
        f"{' --features-file predicted_features.csv' if args.features_file else ''}`. "
        f"{len(subjects)} ACDC patients, {args.folds}-fold patient-level CV stratified by group "
        f"(seed {args.seed}, the folds of `cmrfm finetune --task disease-cls`); seconds of CPU.",
        "",
        "| features from | classifier | accuracy (95 % CI) | balanced accuracy |",
        "|---|---|---|---|",
    ]
    confusions = []
    for source, features in sources.items():
        results = cross_validate(data, features, args.folds, args.seed)
        for name, (y, pred) in results.items():
            acc = metrics.bootstrap_ci(lambda i, y=y, pred=pred: metrics.accuracy(y[i], pred[i]), len(y))
            bal = metrics.balanced_accuracy(y, pred, len(GROUPS))
            lines.append(f"| {source} | {name} | {acc[0]:.3f} ({acc[1]:.3f}-{acc[2]:.3f}) | {bal:.3f} |")
        y, pred = results["logistic regression"]
        confusions += ["", f"Logistic regression on features from {source}:", "", confusion_text(y, pred)]
    body = "\n".join(lines + confusions)
    print(body)
    if args.write:
        update_section(HEADING, body)
    return body


if __name__ == "__main__":
    main()
