"""The HTML report, rendered in a real headless browser (Debian's chromium)."""

import json
import shutil
import subprocess

import pytest
from PIL import Image

from adamllm.posttrain import FormatArgs, run_format
from adamllm.report import write_report
from adamllm.stats import update_stats
from conftest import read_json

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
EVIL = '<script>document.title="pwned";document.body.dataset.pwned="1"</script><img src=x onerror="document.title=\'pwned\'">'
U = "<|start_header_id|>user<|end_header_id|>\n\n"
A = "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
E = "<|eot_id|>"


def chromium():
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.fail("Debian's chromium is needed for the report tests: `make browser` (apt-get install chromium)")
    return path


def browse(tmp_path, url, *extra):
    result = subprocess.run(
        [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *extra, url],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@pytest.fixture
def run_dir(tmp_path):
    """A finished stage-2 output folder, written by hand: 6 records with every kind of ending."""
    images = tmp_path / "images"
    images.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    rows = []
    verdicts = ["yes", "no", "open", "yes", None, None]
    for i, verdict in enumerate(verdicts):
        Image.new("RGB", (64, 48), (40 * i, 120, 200 - 30 * i)).save(images / f"im{i}.png")
        pred = f"Answer with a precise response.\nQ{i}?{A}P{i}{E}{U}Answer with an informative response.\nQ{i}?{A}Long {i}.{E}"
        row = {
            "images": [f"im{i}.png"],
            "messages": [{"role": "user", "content": "<image>\nDescribe the image."}, {"role": "assistant", "content": f"Caption {i}. {EVIL}"}],
            "syn_id": i, "pred": pred,
            "collected_QA": {"Q": f"Q{i}? {EVIL}", "precise_A": f"P{i}", "informative_A": f"Long {i}."},
            "consistency": verdict,
        }
        if i == 4:
            row.update(pred="garbage", collected_QA=None, error={"reason": "no_triplet", "detail": "-"})
        if i == 5:
            row.update(images=["missing.png"], pred=None, collected_QA=None, error={"reason": "image_missing", "detail": "-"})
        rows.append(row)
    (out / "filtered_task_pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    fmt = FormatArgs(data_path=str(out / "filtered_task_pairs.jsonl"), image_folder=str(images), output=str(out / "image_caption_and_synthetic_task.json"))
    summary = run_format(fmt)
    assert summary.records_out == 5  # the record with a missing image is rejected by format
    update_stats(out, "synthesize", {"records_in": 6, "records_out": 5, "rejected": {"image_missing": 1}, "wall_s": 1.0, "engine_s": 0.5, "prompt_tokens": 600, "output_tokens": 90, "args": {"image_folder": str(images)}})
    update_stats(out, "filter", {"records_in": 6, "records_out": 2, "rejected": {"no_triplet": 1, "image_missing": 1, "consistency_no": 1, "consistency_open": 1}, "pass_rate": 0.5, "wall_s": 0.2})
    update_stats(out, "format", {"records_in": 6, "records_out": 5, "rejected": {"image_missing": 1}})
    return out


def test_report_is_self_contained_and_escaped(run_dir):
    html = write_report(run_dir).read_text()
    assert html.count('<section class="card"') == 6
    assert EVIL not in html and "&lt;script&gt;" in html
    assert "http://" not in html and "https://" not in html  # nothing to fetch: images are embedded
    assert html.count('src="data:image/jpeg;base64,') == 5


def test_report_renders_in_chromium_with_filters_and_no_injected_script(run_dir, tmp_path):
    page = write_report(run_dir)
    dom = browse(tmp_path, page.as_uri(), "--dump-dom")
    assert dom.count('<section class="card') == 6
    assert "pwned" not in dom.split("<body")[0] and 'data-pwned' not in dom
    assert "<title>adamllm stage-2 report" in dom
    assert '<b id="shown">6</b>' in dom  # the page's own script ran (CSP allows it by hash)
    yes = browse(tmp_path, page.as_uri() + "#verdict=yes", "--dump-dom")
    assert '<b id="shown">2</b>' in yes and yes.count('class="card hidden"') == 4
    missing = browse(tmp_path, page.as_uri() + "#reason=image_missing", "--dump-dom")
    assert '<b id="shown">1</b>' in missing


def test_report_screenshot_is_not_blank(run_dir, tmp_path):
    page = write_report(run_dir)
    shot = tmp_path / "shot.png"
    browse(tmp_path, page.as_uri(), f"--screenshot={shot}", "--window-size=1200,1400")
    with Image.open(shot) as im:
        colors = im.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colors is not None and len(colors) > 50, "the screenshot is (nearly) one colour"


def test_report_needs_a_finished_run(tmp_path):
    with pytest.raises(ValueError, match="no finished stage-2 run"):
        write_report(tmp_path)
