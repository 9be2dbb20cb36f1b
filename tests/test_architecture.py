"""The package's shape: one direction of imports (layers, no cycles), small modules, a root that holds only the
design card's entry points, and an import that leaves its host's sys.path alone."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "vsibench_eval"
# Bottom to top: a module may import its own layer's modules and those of the layers below it.
LAYERS = [
    {"errors", "metric", "model.families"},
    {"inputs"},
    {"model"},
    {"settings"},
    {"scoring"},
    {"run_dir"},
    {"demo"},
    {"running"},
    {"entry"},
    {""},  # the package's __init__
]
ROOT_FILES = {"eval_qwen.py", "vsibench_acc.py", "qwen_vl_utils.py", "util.py"}


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def imported_modules(path: Path) -> set[str]:
    """The project modules a file imports: `from vsibench_eval import metric` counts as vsibench_eval.metric."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "vsibench_eval":
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                found.add(
                    candidate if (ROOT / Path(*candidate.split("."))).with_suffix(".py").exists() else node.module
                )
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "vsibench_eval"}
    return found


def layer_of(module: str) -> int:
    inside = module.removeprefix("vsibench_eval").removeprefix(".")
    for index, layer in enumerate(LAYERS):
        if inside in layer or inside.split(".")[0] in layer:
            return index
    raise AssertionError(f"{module}: in no layer of LAYERS")


def import_graph() -> dict[str, set[str]]:
    return {module_name(p): imported_modules(p) for p in PACKAGE.rglob("*.py")}


def test_every_import_goes_down_or_sideways():
    upward = [
        f"{module} imports {target}"
        for module, targets in import_graph().items()
        for target in targets
        if layer_of(target) > layer_of(module)
    ]
    assert upward == []


def test_no_import_cycles():
    graph = import_graph()
    state = {}

    def visit(module, trail):
        if state.get(module) == "done":
            return
        assert state.get(module) != "open", "import cycle: " + " -> ".join([*trail, module])
        state[module] = "open"
        for target in graph.get(module, ()):
            if target != "vsibench_eval":  # every module's package __init__, which imports the top (entry)
                visit(target, [*trail, module])
        state[module] = "done"

    for module in graph:
        visit(module, [])


def test_modules_stay_small():
    sizes = {module_name(p): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    assert {m: n for m, n in sizes.items() if n > 450} == {}


def test_the_root_holds_the_entry_points_and_the_package():
    assert {p.name for p in ROOT.glob("*.py")} == ROOT_FILES
    assert (PACKAGE / "__init__.py").is_file()


def test_import_leaves_sys_path_and_the_host_names_alone():
    script = (
        "import sys; before = list(sys.path); import vsibench_eval; "
        "assert sys.path == before, 'sys.path changed'; "
        "ours = {'config', 'util', 'tables', 'report', 'worker', 'launch', 'qwen_vl_utils', 'eval_qwen'}; "
        "print(sorted(ours & set(sys.modules)), 'torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["[]", "False"]  # no flat module names, and torch loads only when a run starts


def test_the_root_modules_re_export_the_package():
    import eval_qwen
    import qwen_vl_utils
    import util
    import vsibench_acc
    from vsibench_eval import entry, errors, metric
    from vsibench_eval.inputs import frames, questions
    from vsibench_eval.model import positions

    assert eval_qwen.main is entry.main and eval_qwen.evaluate is entry.evaluate
    assert vsibench_acc.metric is metric.metric and vsibench_acc.mean_relative_accuracy is metric.mean_relative_accuracy
    assert (
        qwen_vl_utils.load_video is frames.load_video
        and qwen_vl_utils.mrope_position_ids is positions.mrope_position_ids
    )
    assert util.load_questions is questions.load_questions and util.DataError is errors.DataError
