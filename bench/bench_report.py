"""`adamllm report` on big runs: page size, build time and load time in headless Chromium (run by hand
or by `make bench`).

    .venv/bin/python bench/bench_report.py [--sizes 20000 500000] [--images 2000] [--every_card_up_to 20000]

The default (2,000 and 20,000 records, every card at 2,000) takes a few minutes on 2 cores; 500,000
records take about half an hour there, most of it generating the run and formatting it.

Each size gets a fake stage-2 run folder: a filtered file as filter writes it (verdicts and reasons
mixed as in a real run: a third yes, some no / open / invalid, some records without a triplet or an
image), the post-training file written by the real `format` from it, and stats.json. The records
share a pool of `--images` generated pictures (scenes with noise, so their thumbnails cost what a
photo's do). The report runs as a user starts it, in its own process (build s, and its peak resident
memory: the summary streams, so it should not grow with the records); the page's load time is the
wall time of `chromium --headless --dump-dom`, which returns once the page has loaded and its
script has run, less the same for an empty page (Chromium's own start). With
`--every_card_up_to N`, runs of at most N records are also reported with a card for every record
(`--cards_per_group` past the run's size): the page as it was before the sample.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_executors import run  # the command's wall time and peak RSS
from PIL import Image

# (verdict, error reason or None, weight): a third yes, as the paper saw, then the ways a record fails.
OUTCOMES = (
    ("yes", None, 30),
    ("no", None, 35),
    ("open", None, 10),
    ("invalid", None, 5),
    (None, "no_triplet", 15),
    (None, "image_missing", 3),
    (None, "prompt_too_long", 2),
)
U = "<|start_header_id|>user<|end_header_id|>\n\n"
A = "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
E = "<|eot_id|>"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--dump-dom",
]


def make_images(folder: Path, count: int, seed: int) -> list[str]:
    from adamllm.testing.fixtures import draw, random_scene

    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    names = []
    for i in range(count):
        picture = draw(random_scene(rng), rng, size=256)
        noise = Image.effect_noise((256, 256), 40).convert("RGB")
        names.append(f"im{i}.jpg")
        Image.blend(picture, noise, 0.3).save(folder / names[-1], quality=85)
    return names


def make_run(root: Path, size: int, images: list[str], image_folder: Path, seed: int) -> Path:
    """A stage-2 run folder of `size` records; the final file comes from the real format."""
    from adamllm.core.stats import update_stats
    from adamllm.stage2.format import FormatArgs, run_format
    from adamllm.testing.fixtures import caption, qa_tasks, random_scene

    out = root / f"run-{size}"
    out.mkdir(parents=True)
    rng = random.Random(seed)
    outcomes = [o[:2] for o in OUTCOMES]
    weights = [o[2] for o in OUTCOMES]
    with open(out / "filtered_task_pairs.jsonl", "w", encoding="utf-8") as fh:
        for syn_id in range(size):
            verdict, reason = rng.choices(outcomes, weights)[0]
            scene = random_scene(rng)
            _, q, precise, informative = rng.choice(qa_tasks(scene))
            row = {
                "images": ["gone.jpg" if reason == "image_missing" else rng.choice(images)],
                "messages": [
                    {"role": "user", "content": "<image>\nDescribe the image."},
                    {"role": "assistant", "content": caption(scene, rng)},
                ],
                "syn_id": syn_id,
                "pred": f"Answer with a precise response.\n{q}{A}{precise}{E}{U}Answer with an informative "
                f"response.\n{q}{A}{informative}{E}",
                "collected_QA": {"Q": q, "precise_A": precise, "informative_A": informative},
                "consistency": verdict,
            }
            if reason:
                row.update(collected_QA=None, error={"reason": reason, "detail": "-"})
                if reason != "no_triplet":
                    row["pred"] = None
            fh.write(json.dumps(row) + "\n")
    summary = run_format(
        FormatArgs(
            data_path=str(out / "filtered_task_pairs.jsonl"),
            image_folder=str(image_folder),
            output=str(out / "image_caption_and_synthetic_task.json"),
        )
    )
    update_stats(
        out,
        "synthesize",
        {"records_in": size, "records_out": size, "rejected": {}, "args": {"image_folder": str(image_folder)}},
    )
    update_stats(out, "filter", {"records_in": size, "records_out": summary.synthetic_tasks, "rejected": {}})
    update_stats(
        out,
        "format",
        {"records_in": summary.records_in, "records_out": summary.records_out, "rejected": summary.rejected},
    )
    return out


def load_seconds(browser: str, page: Path, profile: Path, timeout: int) -> float | None:
    """Seconds until Chromium has loaded the page; None past `timeout`."""
    start = time.monotonic()
    try:
        result = subprocess.run(
            [browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", page.as_uri()],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return None
    if result.returncode != 0 or "</html>" not in result.stdout:
        raise SystemExit(f"chromium could not load {page}: {result.stderr[-2000:]}")
    return time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000])
    parser.add_argument("--images", type=int, default=2000, help="distinct pictures the records share")
    parser.add_argument(
        "--every_card_up_to",
        type=int,
        default=2000,
        help="also report the page with every card for runs up to this size",
    )
    parser.add_argument(
        "--timeout",
        type=int,
        default=300,
        help="seconds one page may take to load (the table says when it took longer)",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if not browser:
        raise SystemExit("Debian's chromium is needed: `make browser`")

    work = Path(tempfile.mkdtemp(prefix="adamllm-bench-report-"))
    try:
        rows, start_s = measure(args, browser, work)
    finally:
        shutil.rmtree(work)
    print(
        f"\nreport benchmark: {args.images} shared pictures (256 px, noisy); Chromium's own start ({start_s:.1f} s) "
        f"subtracted"
    )
    print("records | cards | page MB | build s | build peak RSS MiB | load s in headless Chromium")
    print("--- | --- | --- | --- | --- | ---")
    for size, label, cards, mb, build_s, peak, load_s in rows:
        load = f"> {args.timeout} (not loaded)" if load_s is None else f"{max(load_s - start_s, 0):.1f}"
        print(f"{size} | {cards} ({label}) | {mb:.1f} | {build_s:.1f} | {peak:.0f} | {load}")


def measure(args: argparse.Namespace, browser: str, work: Path) -> tuple[list[tuple], float]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    blank = work / "blank.html"
    blank.write_text("<!doctype html><html><body></body></html>")
    start_s = min(load_seconds(browser, blank, work / "profile", args.timeout) or 0.0 for _ in range(3))
    image_folder = work / "images"
    images = make_images(image_folder, args.images, args.seed)
    rows = []
    for size in args.sizes:
        out = make_run(work, size, images, image_folder, args.seed)
        # the sample first: a page of every card may not load at all
        for label, extra in (("sample", []), ("every card", ["--cards_per_group", str(size)])):
            if label == "every card" and size > args.every_card_up_to:
                continue
            build_s, peak = run([sys.executable, "-m", "adamllm", "report", str(out), *extra], env)
            page = out / "report.html"
            cards = int(page.read_text(encoding="utf-8").split('data-cards="', 1)[1].split('"', 1)[0])
            load_s = load_seconds(browser, page, work / "profile", args.timeout)
            rows.append((size, label, cards, page.stat().st_size / 1e6, build_s, peak / 2**20, load_s))
            print(f"{size} records, {label}: {rows[-1][3]:.1f} MB, loaded: {load_s is not None}", flush=True)
        shutil.rmtree(out)
    return rows, start_s


if __name__ == "__main__":
    main()
