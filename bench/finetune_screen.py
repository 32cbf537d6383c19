"""Benchmark: screen finetuned-family candidates on ONE split of a real project, before they
earn a three-seed run of `bench/families_real.py`.

PROJECT is a project copy whose stages ran on the real data up to `tune` (e.g. the one
`bench/last_mile.py --keep` keeps under bench/results/): its prefix cache, splits and tuned
rate are reused, nothing there is written. For each member seed, fits one member of the
finetuned family as `train` fits each (its tuned knobs and rate, `--set part.knob=value`
applied to `model.head` or `model.finetune`) and prints the validation and test age MAE per age
band and gender accuracy (and, for test, the 80 % interval's coverage per age band, calibrated
on validation as `train` calibrates it): each member alone, the running average of the members'
outputs (an ensemble over the one cached prefix) and, with `--same-init` (every member starts
from the project seed's weights, only the data order differs), the running average of their
weights (a "soup", served at one model's cost); with `--face-only`, each of these also on the
chip alone, without its mirror (as the served default runs its members). With `--cycles N`,
each member fits its epochs as N restarts (each a warm-up and cosine decay of epochs/N, a fresh
optimizer, the data order seeded by its seed + the restart's index) and its output is the
average of the N snapshots after them (a snapshot ensemble: one member's training time). Decide
on validation; the test figures are for the record.

Two checks of how much the faces are worth: `--train-share 0.81` fits on a seeded share of the
training split's source images (`--draw` seeds it; an image's augmented copies go with it), a
learning curve, and with `--bagged` each member draws its own share (seeded by its seed:
members on different parts of the data); `--refit` fits on train + validation, which then
judges nothing, so only test is printed: validation whole, or with `--balanced` as `balance`'s
plan has its images (the originals it kept, each as often as the plan has it with its augmented
copies), so that its faces follow the training split's balanced ages.

    python bench/finetune_screen.py PROJECT [--members 42 43 44] [--same-init] [--face-only]
                                            [--cycles 3 --set finetune.epochs=21]
                                            [--set head.age_bins=24 ...]
                                            [--train-share 0.81 [--draw 0 | --bagged]
                                             | --refit [--balanced]]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
from families_real import BANDS, band_name
from pipeline_real import cpu_description

from utkface.data.dataset import SplitData, take_rows
from utkface.data.labels import AGE, AGE_BINS, GENDER, gender_labels
from utkface.inference.families import Outputs as Answered
from utkface.inference.families import answer_columns, calibrate_interval
from utkface.scoring.age_interval import AGE_HIGH, AGE_LOW


def by_band(ages: np.ndarray, values: np.ndarray) -> str:
    """The mean of `values` in each age band of the true `ages`."""
    return " ".join(
        f"{band_name(low, high)}: {values[(ages >= low) & (ages < high)].mean():.2f}"
        for low, high in BANDS
    )


def scores(ages: np.ndarray, genders: np.ndarray, age: np.ndarray, female: np.ndarray) -> str:
    error = np.abs(age - ages)
    correct = gender_labels(female) == genders
    return f"age MAE {error.mean():.3f} ({by_band(ages, error)}), gender {correct.mean():.3f}"


Outputs = dict[str, dict[str, np.ndarray]]  # judged split -> age / gender / age bins -> values


def output_average(outputs: list[Outputs]) -> Outputs:
    """The mean of several models' (or snapshots') outputs, split by split."""
    return {
        name: {k: np.mean([out[name][k] for out in outputs], 0) for k in (AGE, GENDER, AGE_BINS)}
        for name in outputs[0]
    }


def coverage(
    val: SplitData,
    val_out: dict[str, np.ndarray],
    test: SplitData,
    test_out: dict[str, np.ndarray],
    centres: np.ndarray,
    age_max: int,
) -> str:
    """The 80 % age interval calibrated on the validation outputs as `train` calibrates the
    served model's, and its coverage of the test ages, overall and per age band."""

    def answered(out: dict[str, np.ndarray]) -> Answered:
        return Answered(out[AGE][:, 0], out[GENDER][:, 0], out[AGE_BINS], centres)

    interval = calibrate_interval(answered(val_out), val.age, age_max)
    answer = answer_columns(answered(test_out), age_max, interval)
    inside = (test.age >= answer[AGE_LOW]) & (test.age <= answer[AGE_HIGH])
    return f"interval coverage {inside.mean():.3f} ({by_band(test.age, inside)})"


def source_share(data: SplitData, share: float, seed: int) -> SplitData:
    """A seeded `share` of `data`'s source images (`image_id`), each with its augmented copies,
    in split order."""
    sources = data.table["image_id"].unique()
    drawn = np.random.default_rng(seed).choice(sources, round(share * len(sources)), replace=False)
    return take_rows(data, np.flatnonzero(data.table["image_id"].isin(drawn).to_numpy()))


def joined(train: SplitData, val: SplitData, age_cap: int) -> SplitData:
    """The training and validation splits as one, validation's ages capped as `balance` caps
    the training split's."""
    images = {
        name: np.concatenate([np.asarray(train.images[name]), np.asarray(val.images[name])])
        for name in train.images
    }
    age = np.concatenate([train.age, np.minimum(val.age, age_cap).astype(train.age.dtype)])
    gender = np.concatenate([train.gender, val.gender])
    return SplitData(images, age, gender, pd.concat([train.table, val.table], ignore_index=True))


def as_planned(val: SplitData, plan: pd.DataFrame) -> SplitData:
    """`val`'s rows as `balance`'s plan has its images: each image the plan kept, once per plan
    row (the original and its augmented copies), in plan order."""
    position = pd.Series(np.arange(len(val.age)), index=val.table["image_id"].to_numpy())
    planned = plan["image_id"][plan["image_id"].isin(position.index)]
    return take_rows(val, position[planned].to_numpy())


def with_overrides(cfg: object, overrides: list[str]) -> object:
    for override in overrides:
        key, value = override.split("=", 1)
        part, knob = key.split(".")
        changed = getattr(cfg, part).model_copy(update={knob: json.loads(value)})
        cfg = cfg.model_copy(update={part: changed})
    return cfg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("project", type=Path)
    parser.add_argument("--members", type=int, nargs="+", default=[42])
    parser.add_argument("--same-init", action="store_true")
    parser.add_argument("--set", dest="overrides", nargs="*", default=[])
    parser.add_argument(
        "--face-only", action="store_true", help="also judge each face without its mirror"
    )
    parser.add_argument("--cycles", type=int, default=1, help="restarts a member, averaged")
    fitted_on = parser.add_mutually_exclusive_group()
    fitted_on.add_argument("--train-share", type=float, help="fit on this share of the sources")
    fitted_on.add_argument("--refit", action="store_true", help="fit on train + validation")
    parser.add_argument("--draw", type=int, default=0, help="the seed of --train-share's draw")
    parser.add_argument(
        "--balanced", action="store_true", help="with --refit, validation as the plan has it"
    )
    parser.add_argument(
        "--bagged", action="store_true", help="with --train-share, each member draws its own"
    )
    args = parser.parse_args()
    if args.bagged and args.train_share is None:
        parser.error("--bagged needs --train-share")
    if args.balanced and not args.refit:
        parser.error("--balanced needs --refit")
    if args.cycles < 1:
        parser.error("--cycles must be at least 1")
    os.chdir(args.project)  # the project's relative paths: its caches, splits and tune result

    from utkface import paths
    from utkface.model import finetuned
    from utkface.model.fitting import build_member, fit_model, load_inputs, seed_everything
    from utkface.model.head import HEAD
    from utkface.model.training import epochs, load_tuned, member_config, resolve_lr
    from utkface.params import load_params

    params, tuned, family = load_params(), load_tuned(), "finetuned"
    cfg = with_overrides(member_config(params, family, tuned.of(family)), args.overrides)
    lr, _ = resolve_lr(params.fixed_lr, tuned.of(family))
    train, val, test = (load_inputs(family, split) for split in ("train", "val", "test"))
    judged = {"val": val, "test": test}
    if args.train_share is not None and not args.bagged:
        train = source_share(train, args.train_share, args.draw)
    if args.refit:
        joining = as_planned(val, pd.read_parquet(paths.PLAN)) if args.balanced else val
        train, judged = joined(train, joining, params.balance.age_cap), {"test": test}
    inputs = {
        name: {
            finetuned.PREFIX: np.asarray(data.images[finetuned.PREFIX][:, 0], dtype=np.float32),
            finetuned.FEATURES: data.images[finetuned.FEATURES],
        }
        for name, data in judged.items()
    }  # each face's own view, with its mirror: one member's inputs
    if args.face_only:  # the model averages its two prefix slots: give both the face
        for name in list(judged):
            prefix = inputs[name][finetuned.PREFIX].copy()
            prefix[:, 1] = prefix[:, 0]
            inputs[f"{name}, face only"] = inputs[name] | {finetuned.PREFIX: prefix}
            judged[f"{name}, face only"] = judged[name]
    print(
        f"{cpu_description()}; lr {lr}, overrides {args.overrides or 'none'}; "
        f"{len(train.age)} training rows"
    )

    def predict(model: object) -> Outputs:
        return {name: model.predict(x, verbose=0, batch_size=256) for name, x in inputs.items()}

    def show(label: str, outputs: Outputs, centres: np.ndarray | None) -> None:
        """Each judged split's scores; for test, with the bins' `centres` (None: the averaged
        models' bins differ), the interval's coverage too."""
        for name, data in judged.items():
            out = outputs[name]
            figures = scores(data.age, data.gender, out[AGE][:, 0], out[GENDER][:, 0])
            calibrated = name.replace("test", "val")
            if name.startswith("test") and calibrated in judged and centres is not None:
                figures += ", " + coverage(
                    judged[calibrated], outputs[calibrated], data, out, centres,
                    params.validate_.age_max,
                )  # fmt: skip
            print(f"{label:<28} {name:<15} {figures}", flush=True)

    def shared(centres: list[np.ndarray]) -> np.ndarray | None:
        return centres[0] if all(np.array_equal(c, centres[0]) for c in centres) else None

    members, weights, centres = [], [], []
    for seed in args.members:
        started = time.perf_counter()
        fitted = source_share(train, args.train_share, seed) if args.bagged else train
        if args.bagged:
            print(f"member {seed}: {len(fitted.age)} training rows", flush=True)
        init = params.seed if args.same_init else seed
        seed_everything(init)
        model, compile_fn = build_member(family, cfg, params.train, fitted, init)
        centres.append(model.get_layer(HEAD).get_layer(AGE).get_weights()[0][:, 0])
        if args.same_init:
            seed_everything(seed)  # then the data order's; otherwise as `fit` does
        snapshots = []
        for cycle in range(args.cycles):
            fit_model(
                model, params.train, lr, fitted, val, seed + cycle,
                epochs(family, cfg, params) // args.cycles, [],
                early_stopping=False, compile_fn=compile_fn, epoch_lines=False,
            )  # fmt: skip
            snapshots.append(predict(model))
            if args.cycles > 1:
                show(f"  snapshot {cycle + 1}", snapshots[-1], centres[-1])
        members.append(output_average(snapshots))
        show(f"member {seed} ({time.perf_counter() - started:.0f} s)", members[-1], centres[-1])
        if len(members) > 1:
            show(f"  output average of {len(members)}", output_average(members), shared(centres))
        if args.same_init:
            weights.append(model.get_weights())
            model.set_weights([np.mean(layer, 0) for layer in zip(*weights, strict=True)])
            if len(weights) > 1:
                show(f"  weight average of {len(weights)}", predict(model), shared(centres))


if __name__ == "__main__":
    main()
