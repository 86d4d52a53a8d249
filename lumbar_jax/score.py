"""Score a Kaggle-format submission against labels, the way users check a submission locally.

  python -m lumbar_jax.score --solution train.csv --submission submission.csv [--prior_from train.csv]

`--solution` is a train.csv-shaped file (study_id + the 25 target columns of severity names); only the
studies present in the submission are scored, and every labelled target of those studies must have a row.
The class-prior baseline and the best constant printed beside the score are fitted on the labels of
`--prior_from`; by default on the `train.csv` beside the solution file when there is one (the training
labels), else on the solution itself, which flatters them: they have seen the answers' frequencies, and on
a few studies the "best constant" can then score worse than the baseline. The output says which labels they
were fitted on. Fewer than 20 scored studies give a noisy score: one warning line on stderr.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

from lumbar_jax import cli
from lumbar_jax import labels as labels_lib
from lumbar_jax import metrics

FEW_STUDIES = 20  # below this many scored studies the score is noisy: warned on stderr


def read_label_table(path: str) -> tuple[np.ndarray, np.ndarray]:
    """train.csv-shaped file -> (study_ids int [N], labels int [N, 25] in target order, -1 missing): every row,
    read by `data.kaggle_csv.read_label_table` in its lenient mode."""
    from lumbar_jax.data import kaggle_csv  # here, not at the top: `--help` answers without it

    study_ids, codes, _ = kaggle_csv.read_label_table(path, strict=False)
    return study_ids, codes


def read_submission(path: str) -> tuple[np.ndarray, np.ndarray]:
    """submission.csv -> (study_ids int [N], probs float [N, 25, 3]); every study needs all 25 rows."""
    import pandas as pd

    table = pd.read_csv(path)
    expected = ["row_id", *labels_lib.SEVERITY_COLUMNS]
    if sorted(table.columns) != sorted(expected):
        raise ValueError(f"{path}: columns must be {expected}, got {list(table.columns)}")
    if table["row_id"].duplicated().any():
        dupes = table.loc[table["row_id"].duplicated(), "row_id"].head(3).tolist()
        raise ValueError(f"{path}: duplicated row_id, e.g. {dupes}")
    parsed = [labels_lib.parse_row_id(r) for r in table["row_id"]]
    study_ids = np.array(sorted({s for s, _ in parsed}), dtype=np.int64)
    position = {s: i for i, s in enumerate(study_ids)}
    probs = np.full((len(study_ids), labels_lib.NUM_TARGETS, labels_lib.NUM_SEVERITIES), np.nan)
    values = table[list(labels_lib.SEVERITY_COLUMNS)].to_numpy(np.float64)
    for (study, target), row in zip(parsed, values):
        probs[position[study], target] = row
    absent = np.argwhere(np.isnan(probs).any(-1))
    if len(absent):
        s, t = absent[0]
        example = labels_lib.row_id(study_ids[s], labels_lib.TARGETS[t])
        raise ValueError(f"{path}: {len(absent)} rows missing, e.g. {example}")
    return study_ids, probs


def default_prior_from(solution: str) -> str:
    """The labels the references are fitted on without `--prior_from`: the `train.csv` beside the solution
    file when there is one (the training labels), else the solution itself."""
    train = os.path.join(os.path.dirname(os.path.abspath(solution)), "train.csv")
    return train if os.path.isfile(train) else solution


def score_submission(solution: str, submission: str, prior_from: str | None = None) -> dict:
    """Competition score of `submission` on the solution's studies it covers, with the class-prior baseline
    and the best constant beside it, fitted on `prior_from` (default: `default_prior_from(solution)`);
    `prior_from` in the result names the labels they were fitted on."""
    sol_ids, sol_labels = read_label_table(solution)
    sub_ids, probs = read_submission(submission)
    index = {s: i for i, s in enumerate(sol_ids)}
    unknown = [int(s) for s in sub_ids if s not in index]  # Python ints: a message shows 178082056, not np.int64(...)
    if unknown:
        raise ValueError(f"{submission}: {len(unknown)} studies not in {solution}, e.g. {unknown[:3]}")
    labels = sol_labels[[index[s] for s in sub_ids]]
    prior_from = prior_from or default_prior_from(solution)
    same = os.path.abspath(prior_from) == os.path.abspath(solution)
    prior_labels = sol_labels if same else read_label_table(prior_from)[1]
    result = metrics.evaluate_predictions(labels, probs, prior_labels)
    result["num_studies"] = int(len(sub_ids))
    result["prior_from"] = prior_from
    result["prior_is_solution"] = same
    return result


def format_report(result: dict) -> str:
    """A small table: each loss of the submission next to the class-prior baseline and the best constant."""
    lines = [f"{'':20s}{'submission':>12s}{'baseline':>12s}{'best const':>12s}"]
    for key in (*metrics.LOSS_KEYS, "score"):
        lines.append(f"{key:20s}{result[key]:12.4f}{result['baseline'][key]:12.4f}"
                     f"{result['weighted_prior'][key]:12.4f}")
    lines.append(f"accuracy {result['accuracy']:.4f}  balanced accuracy {result['balanced_accuracy']:.4f}  "
                 f"studies {result['num_studies']}")
    if "prior_from" in result:
        whose = (" (the solution itself: they have seen the answers' class frequencies)"
                 if result.get("prior_is_solution") else "")
        lines.append(f"baseline and best constant fitted on the labels of {result['prior_from']}{whose}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = cli.argument_parser("python -m lumbar_jax.score", __doc__)
    parser.add_argument("--solution", required=True, help="train.csv-shaped label file")
    parser.add_argument("--submission", required=True, help="submission.csv (row_id,normal_mild,moderate,severe)")
    parser.add_argument("--prior_from", default=None,
                        help="label file the baseline and best constant are fitted on; default: the train.csv "
                             "beside --solution if there is one, else --solution")
    parser.add_argument("--json", default=None, help="also write the result as JSON here")
    args = parser.parse_args(argv)
    result = score_submission(args.solution, args.submission, args.prior_from)
    if result["num_studies"] < FEW_STUDIES:
        print(f"warning: only {result['num_studies']} studies scored (fewer than {FEW_STUDIES}): the score and "
              "the references beside it are noisy", file=sys.stderr)
    print(format_report(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
