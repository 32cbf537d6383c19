"""`utkface promote`: move the `champion` alias to a registered version, behind the quality
gate (`utkface.mlops.promotion`)."""

from __future__ import annotations

import argparse
import sys

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from utkface.mlops import registry
from utkface.mlops.promotion import ALREADY_CHAMPION, PromotionError, comparison_table, promote
from utkface.params import ParamsError, load_params


def add_arguments(parser: argparse.ArgumentParser) -> None:
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--version", type=int, help=f"version to promote (default: the {registry.CHALLENGER})"
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


def run(args: argparse.Namespace) -> int:
    """0: promoted (or already champion); 1: refused by the gate; 2: nothing to decide on."""
    try:
        params = load_params()
        name = args.model_name or params.register_.model_name
        client = registry.registry_client()
        version = args.version if args.exp is None else experiment_version(client, name, args.exp)
        outcome = promote(client, name, version, params.promote, args.force)
    except (ParamsError, PromotionError, MlflowException) as error:
        print(f"promote: {error}", file=sys.stderr)
        return 2
    decision, candidate, champion = outcome.decision, outcome.candidate, outcome.champion
    if decision.reason == ALREADY_CHAMPION:
        print(f"promote: {name} v{candidate.version} is {ALREADY_CHAMPION}; nothing to do")
        return 0
    if champion is not None:
        print(
            f"champion v{champion.version} (data_version {champion.tags.get('data_version')}) vs "
            f"candidate v{candidate.version} (data_version {candidate.tags.get('data_version')})"
        )
        print(comparison_table(decision))
    if decision.promote:
        print(f"promote: {name} v{candidate.version} is now champion ({decision.reason})")
        return 0
    print(f"promote: refused {name} v{candidate.version}: {decision.reason}", file=sys.stderr)
    return 1
