"""`utkface promote`: move the `champion` alias to a registered version, behind the quality
gate (`utkface.mlops.promotion`)."""

from __future__ import annotations

import argparse
import sys

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from utkface.mlops import registry
from utkface.mlops.promotion import (
    ALREADY_CHAMPION,
    Candidate,
    Outcome,
    PromotionError,
    candidates,
    comparison_table,
    promote,
    promote_best,
)
from utkface.params import load_params


def add_arguments(parser: argparse.ArgumentParser) -> None:
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--version",
        type=int,
        help="version to promote (default: of the versions registered since the champion, the "
        "best on validation that passes the gate; without any, the challenger)",
    )
    which.add_argument(
        "--exp", metavar="NAME", help="the version DVC experiment NAME registered (dvc exp show)"
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="promote despite a failed gate or different test data (recorded as the reason)",
    )
    parser.add_argument(
        "--model-name", help="registered model (default: register.model_name in params.yaml)"
    )


def experiment_version(client: MlflowClient, name: str, experiment: str) -> int:
    found = registry.experiment_version(client, name, experiment)
    if found is None:
        raise PromotionError(
            f"no version of {name!r} was registered by DVC experiment {experiment!r} "
            f"in {client.tracking_uri}"
        )
    return int(found.version)


def candidates_table(ranked: list[Candidate]) -> str:
    """The unpromoted versions, best first: version, DVC experiment, validation objective and
    the test metrics the gate compares."""
    rows = [("version", "experiment", "val objective", "test age MAE", "test gender acc")]
    for c in ranked:
        tags = c.version.tags
        rows.append(
            (
                f"v{c.version.version}",
                tags.get("dvc_exp_name", ""),
                "-" if c.objective is None else f"{c.objective:.3f}",
                tags.get(registry.AGE_MAE, "-")[:6],
                tags.get(registry.GENDER_ACCURACY, "-")[:6],
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def decide_on(args: argparse.Namespace) -> tuple[str, list[Outcome]]:
    """The model's name and the outcomes of this promotion: one for a named version, one per
    candidate tried otherwise (after printing the candidates when there are several)."""
    params = load_params(only=("register", "promote", "tune"))  # what promotion reads
    name = args.model_name or params.register_.model_name
    client = registry.registry_client()
    if args.version is not None or args.exp is not None:
        version = args.version if args.exp is None else experiment_version(client, name, args.exp)
        return name, [promote(client, name, version, params.promote, args.force)]
    ranked = candidates(client, name, params.tune.gender_weight)
    if len(ranked) > 1:
        print(
            f"{len(ranked)} versions registered since the champion, best validation objective "
            f"first (age MAE + {params.tune.gender_weight:g} x (1 - gender accuracy)):"
        )
        print(candidates_table(ranked))
    return name, promote_best(client, name, ranked, params.promote, args.force)


def run(args: argparse.Namespace) -> int:
    """0: promoted (or already champion); 1: refused by the gate; 2: nothing to decide on."""
    try:
        name, outcomes = decide_on(args)
    except (PromotionError, MlflowException) as error:
        print(f"promote: {error}", file=sys.stderr)
        return 2
    return [report(name, outcome) for outcome in outcomes][-1]  # the deciding one


def report(name: str, outcome: Outcome) -> int:
    """Print one decision; its exit status."""
    decision, candidate, champion = outcome.decision, outcome.candidate, outcome.champion
    if decision.reason == ALREADY_CHAMPION:
        print(f"promote: {name} v{candidate.version} is {ALREADY_CHAMPION}; nothing to do")
        return 0
    if champion is not None:
        print(
            f"champion v{champion.version} (data_version {champion.tags.get('data_version')}) vs "
            f"candidate v{candidate.version} (data_version {candidate.tags.get('data_version')})"
        )
    if decision.checks:
        print(comparison_table(decision))
    if decision.promote:
        print(f"promote: {name} v{candidate.version} is now champion ({decision.reason})")
        return 0
    print(f"promote: refused {name} v{candidate.version}: {decision.reason}", file=sys.stderr)
    return 1
