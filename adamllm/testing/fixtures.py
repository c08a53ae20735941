"""Procedural data for tests, benchmarks and the demo: images whose content we know, and text that
describes them truthfully, in the seed formats of stage 1 and the input format of stage 2.

    adamllm make-seed-fixtures exp/seed_fixtures --num_images 40

Each image shows 1-4 shapes of one kind and one colour on a plain background, so a caption, a
precise answer ("3") and an informative answer ("... so there are 3 circles") can all be derived from
the same few facts.
"""

from __future__ import annotations

import random
import shutil
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from adamllm.core.jsonfiles import iter_input_records, write_json_list

COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 200, 30)}
BACKGROUNDS = {"white": (250, 250, 250), "gray": (128, 128, 128), "black": (15, 15, 15)}
SHAPES = ("circle", "square", "triangle")
NUMBER_WORDS = ("zero", "one", "two", "three", "four")
IMAGE_SIZE = 96


@dataclass(frozen=True)
class Scene:
    shape: str
    color: str
    background: str
    count: int

    @property
    def noun(self) -> str:
        return self.shape if self.count == 1 else self.shape + "s"


def random_scene(rng: random.Random) -> Scene:
    return Scene(rng.choice(SHAPES), rng.choice(list(COLORS)), rng.choice(list(BACKGROUNDS)), rng.randint(1, 4))


def draw(scene: Scene, rng: random.Random, size: int = IMAGE_SIZE) -> Image.Image:
    """The scene drawn in non-overlapping cells of a 2x2 grid."""
    image = Image.new("RGB", (size, size), BACKGROUNDS[scene.background])
    pen = ImageDraw.Draw(image)
    cell = size // 2
    for slot in rng.sample(range(4), scene.count):
        x0, y0 = (slot % 2) * cell + cell // 6, (slot // 2) * cell + cell // 6
        x1, y1 = x0 + cell * 2 // 3, y0 + cell * 2 // 3
        fill = COLORS[scene.color]
        if scene.shape == "circle":
            pen.ellipse((x0, y0, x1, y1), fill=fill)
        elif scene.shape == "square":
            pen.rectangle((x0, y0, x1, y1), fill=fill)
        else:
            pen.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], fill=fill)
    return image


# Words for the filler sentence some captions carry: real captions say much that no question asks
# about, and a synthesizer trained only on terse captions loses its format on a long one.
FILLER = (
    "the a of with and in on near small large bright dark soft round flat thin thick fresh warm cold "
    "plate bowl cup table wooden white glass sauce bread rice soup cheese tomato green leaf slice "
    "cut served topped baked fried grilled sweet golden brown crisp creamy scan image view slice axial "
    "tissue cell stain field region left right upper lower central visible shows appears seen taken "
    "photo close detail edge surface texture pattern shadow light background foreground corner"
).split()


def caption(scene: Scene, rng: random.Random | None = None) -> str:
    text = (
        f"The image shows {NUMBER_WORDS[scene.count]} {scene.color} {scene.noun} on a plain {scene.background} "
        f"background."
    )
    if rng is not None and rng.random() < 0.7:
        words = rng.choices(FILLER, k=rng.randint(10, 80))
        text += " " + " ".join(words).capitalize() + "."
    return text


# (task name, question, precise answer, informative answer) for a scene.
def qa_tasks(scene: Scene) -> list[tuple[str, str, str, str]]:
    n, noun = NUMBER_WORDS[scene.count], scene.noun
    return [
        (
            "shape_count",
            "How many shapes are in the image?",
            str(scene.count),
            f"Counting the {scene.color} {noun} in the picture gives {n}, so there are {scene.count} shapes.",
        ),
        (
            "shape_color",
            "What color are the shapes?",
            scene.color.capitalize(),
            f"All of the shapes are filled with the same colour, and that colour is {scene.color}.",
        ),
        (
            "shape_kind",
            "Which kind of shape is drawn?",
            scene.shape.capitalize(),
            f"Each figure in the image is a {scene.shape}, drawn on the {scene.background} background.",
        ),
    ]


def make_seed_fixtures(out_dir: str | Path, num_images: int, seed: int = 0) -> dict[str, Path]:
    """Write the three seed files and their images, in the formats the published files use.

    Variants are mixed on purpose, as they are in published copies: half the caption records carry a
    "caption" key, half only the gpt turn; the image tag stands at the start of some Vision-Flan
    questions and at the end of others; the ALLaVA files prefix image paths with folders.

    Returns the paths: caption, precise, informative, image_folder.
    """
    out = Path(out_dir)
    folder = out / "images"
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    captions, precise, informative = [], [], []
    for i in range(num_images):
        scene = random_scene(rng)
        name = f"seed_{i:05d}.png"
        draw(scene, rng).save(folder / name)
        text = caption(scene, rng)
        record = {
            "id": f"cap_{i}",
            "image": f"allava_vflan/images/images_191task_1k/{name}",
            "conversations": [
                {"from": "human", "value": "<image>\nDescribe the image."},
                {"from": "gpt", "value": text},
            ],
        }
        if i % 2 == 0:
            record["caption"] = text
        captions.append(record)
        task, question, short, long = rng.choice(qa_tasks(scene))
        human = f"<image>\n{question}" if i % 3 else f"{question}\n<image>"
        precise.append(
            {
                "id": f"vflan_{i}",
                "task_name": task,
                "image": f"images_191task_1k/{name}",
                "conversations": [{"from": "human", "value": human}, {"from": "gpt", "value": short}],
            }
        )
        informative.append(
            {
                "id": f"allava_{i}",
                "image": f"allava_vflan/images/{name}",
                "conversations": [{"from": "human", "value": f"<image>\n{question}"}, {"from": "gpt", "value": long}],
            }
        )
    paths = {
        "caption": out / "ALLaVA-Caption-VFLAN-4V.json",
        "precise": out / "vflan_metadata.json",
        "informative": out / "ALLaVA-Instruct-VFLAN-4V.json",
    }
    write_json_list(paths["caption"], captions)
    write_json_list(paths["precise"], precise)
    write_json_list(paths["informative"], informative)
    return {**paths, "image_folder": folder}


def make_caption_pairs(out_dir: str | Path, num_pairs: int, seed: int = 0) -> dict[str, Path]:
    """Write stage-2 input (image-caption pairs) with procedural images; returns data_path, image_folder."""
    out = Path(out_dir)
    folder = out / "images"
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    records = []
    for i in range(num_pairs):
        scene = random_scene(rng)
        name = f"pair_{i:06d}.png"
        draw(scene, rng).save(folder / name)
        records.append(
            {
                "images": [name],
                "messages": [
                    {"role": "user", "content": "<image>\nDescribe the image."},
                    {"role": "assistant", "content": caption(scene)},
                ],
            }
        )
    data_path = out / "image_caption_pairs.json"
    write_json_list(data_path, records)
    return {"data_path": data_path, "image_folder": folder}


def combine_caption_pairs(out_dir: str | Path, sources: dict[str, tuple[str | Path, str | Path]]) -> dict[str, Path]:
    """Write one stage-2 input from several: `sources` maps a name to (pairs file, image folder); each
    source's images are copied to OUT_DIR/images/NAME/ and its records' image paths prefixed with NAME/,
    so every path stays relative and inside the one image folder. Returns data_path, image_folder."""
    out = Path(out_dir)
    folder = out / "images"
    records = []
    for name, (data_path, image_folder) in sources.items():
        for record in iter_input_records(data_path):
            for image in record["images"]:
                target = folder / name / image
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(Path(image_folder) / image, target)
            records.append({**record, "images": [f"{name}/{image}" for image in record["images"]]})
    data_path = out / "image_caption_pairs.json"
    write_json_list(data_path, records)
    return {"data_path": data_path, "image_folder": folder}
