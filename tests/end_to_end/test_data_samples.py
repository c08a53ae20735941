"""data_samples/: valid stage-2 input, every image present, decodable and documented."""

from pathlib import Path

from adamllm.core.images import load_image
from adamllm.core.jsonfiles import iter_json_records
from adamllm.core.records import parse_caption_pair

ROOT = Path(__file__).resolve().parents[2] / "data_samples"


def test_samples_are_valid_stage2_input():
    pairs = [parse_caption_pair(r) for r in iter_json_records(ROOT / "image_caption_pairs.json")]
    assert len(pairs) >= 12
    domains = {p.image.split("_")[0] for p in pairs}
    assert domains == {"food", "biomed"}
    readme = (ROOT / "README.md").read_text()
    for p in pairs:
        assert load_image(ROOT / "images", p.image).mode == "RGB"
        assert p.stripped_special_tokens == 0 and len(p.caption) > 40
        assert f"`{p.image}`" in readme, f"{p.image} has no source/licence row in data_samples/README.md"
    assert sorted(p.image for p in pairs) == sorted(f.name for f in (ROOT / "images").iterdir())
