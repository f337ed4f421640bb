"""scripts/gpu_check.sh runs only on a GPU machine, which CI never has: check here that every test
file it names exists and that every tool command line in it is accepted by that tool's parser."""
from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gpu_check.sh"


def _commands():
    """(module, argv) of each ``"$PY" -m foundation_stereo_ros.tools.X ...`` line (continuations joined)."""
    text = SCRIPT.read_text().replace("\\\n", " ")
    for line in text.splitlines():
        m = re.search(r'"\$PY" -m (foundation_stereo_ros\.tools\.\w+)(.*)$', line)
        if m:
            args = m.group(2).replace('"$OUT/', '"out/').replace("$node_flag", "--no-node")
            yield m.group(1), shlex.split(args)


def test_every_named_test_file_exists():
    names = set(re.findall(r"test/(?:\w+/)*test_\w+\.py", SCRIPT.read_text()))
    assert len(names) >= 5
    missing = [n for n in sorted(names) if not (SCRIPT.parents[1] / n).is_file()]
    assert not missing, missing


def test_every_tool_command_line_parses():
    commands = list(_commands())
    assert {m for m, _ in commands} >= {"foundation_stereo_ros.tools.benchmark",
                                        "foundation_stereo_ros.tools.memory_fit"}
    for module, argv in commands:
        parser = importlib.import_module(module).build_parser()
        args = parser.parse_args(argv)  # exits (fails the test) on an option the tool does not have
        assert args.json and args.json.startswith("out/"), (module, argv)


def test_every_test_selection_matches_tests():
    """``pytest FILE -k NAME`` in the script must select tests: a renamed test would else be
    skipped silently on the one GPU run."""
    text = SCRIPT.read_text().replace("\\\n", " ")
    selections = re.findall(r"(test/(?:\w+/)*test_\w+\.py)[^\n]*?-k (\w+)", text)
    assert selections
    for path, name in selections:
        source = (SCRIPT.parents[1] / path).read_text()
        assert re.search(rf"def test_\w*{name}\w*\(", source), (path, name)
