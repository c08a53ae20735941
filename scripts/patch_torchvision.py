"""Make PyPI's torchvision importable beside the CPU torch wheel (see docs/cpu-stack.md).

PyPI's torchvision is a CUDA build whose compiled ops do not load beside torch's CPU wheel; its
`_meta_registrations.py` then fails at import registering fake kernels for `torchvision::nms` and
`torchvision::qnms`. vLLM's LLaVA path imports transformers' torchvision image processor, which only
needs torchvision's pure-Python transforms. Registering those two fakes only when the ops loaded
makes the import work. Idempotent; does nothing when torchvision is absent or already patched.
"""

import importlib.util
import pathlib
import re
import sys

MARK = "# adamllm: registered only when torchvision's compiled ops loaded"


def main() -> int:
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        print("torchvision not installed: nothing to patch")
        return 0
    path = pathlib.Path(spec.origin).parent / "_meta_registrations.py"
    text = path.read_text()
    if MARK in text:
        print(f"{path} already patched")
        return 0
    pattern = re.compile(
        r'^@register_meta\("(nms|qnms)"\)|^@torch\.library\.register_fake\("torchvision::(nms|qnms)"\)', re.M
    )
    matches = list(pattern.finditer(text))
    if not matches:
        print(f"{path}: no nms/qnms registration found; torchvision layout changed", file=sys.stderr)
        return 1
    for m in reversed(matches):
        decorator = m.group(0)
        guarded = f"{MARK}\n@(lambda f: {decorator[1:]}(f) if torchvision.extension._has_ops() else f)"
        text = text[: m.start()] + guarded + text[m.end() :]
    if "import torchvision" not in text:
        text = "import torchvision.extension\n" + text
    path.write_text(text)
    print(f"patched {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
