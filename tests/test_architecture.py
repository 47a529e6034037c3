"""The package's imports run one way (docs/architecture.md): no loop, and no import back up a layer."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "mine_vae"

# Lower numbers are lower layers; a module imports its own layer or lower ones. The model's files (the latent path's
# among them, with the pipeline's
# and the sentence-transformers module's, which the modelling file imports lazily) ship as remote code and import only
# each other. The feeders (data, tokenizers, recipes, assets) serve the trainer, the study and the CLI and import only
# the model's files and each other.
LAYERS = {
    "configuration_mine_vae": 0,
    "critic": 1,
    "latent_path": 2,
    "generation_mine_vae": 2,
    "pretrained_mine_vae": 2,
    "modeling_mine_vae": 2,
    "pipeline_mine_vae": 2,
    "sentence_mine_vae": 2,
    "evaluation": 3,
    "estimators": 3,
    "metrics": 3,
    "latent": 3,
    "text_latent": 3,
    "schedules": 4,
    "training_args": 4,
    "adapters": 4,
    "trainer": 4,
    "checkpointing": 4,
    "distributed": 4,
    "sampling": 4,
    "runs": 4,
    "modelcard": 4,
    "hub": 4,
    "study": 4,
    "cli": 5,
    "explorer": 5,
}
FEEDERS = {"data", "processing_mine_vae", "data_collator", "presets", "assets"}
FEEDER_LAYER = 2  # what a feeder may import besides other feeders


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, name: str) -> set[str]:
    """The package's modules that `path` imports (relative or absolute, at any depth of the file)."""
    base = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base.rsplit(".", node.level - 1)[0] if node.level > 1 else base
                target = f"{anchor}.{node.module}" if node.module else anchor
            elif (node.module or "").startswith("mine_vae"):
                target = node.module
            else:
                continue
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("mine_vae"))
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    return {name: {t for t in _imports(path, name) if t in modules and t != name} for name, path in modules.items()}


def _part(module: str) -> str:
    """The top-level part of the package a module belongs to: `mine_vae.cli.train` -> `cli`."""
    return module.split(".")[1] if "." in module else ""


def test_the_import_graph_has_no_loop():
    graph = _graph()
    state: dict[str, int] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            assert state.get(target) != 1, "import loop: " + " -> ".join([*path, module, target])
            if target not in state:
                visit(target, [*path, module])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [])


def test_no_import_runs_back_up_a_layer():
    upward = []
    for module, targets in _graph().items():
        source = _part(module)
        if source == "":  # the package's __init__ gathers the public API from every layer
            continue
        for target in targets:
            if _part(target) == "":
                if source not in ("cli", "study"):  # the top layers may read the package's version and registrations
                    upward.append((module, target))
                continue
            destination = _part(target)
            if source in FEEDERS:
                allowed = destination in FEEDERS or LAYERS.get(destination, 99) <= FEEDER_LAYER
            elif destination in FEEDERS:
                allowed = LAYERS[source] >= LAYERS["schedules"]  # the trainer's layer and above use the feeders
            else:
                allowed = LAYERS[destination] <= LAYERS[source]
            if not allowed:
                upward.append((module, target))
    assert not upward, f"imports running back up a layer: {sorted(upward)}"


def test_the_model_files_import_only_each_other():
    model_files = {
        "mine_vae.configuration_mine_vae",
        "mine_vae.critic",
        "mine_vae.latent_path",
        "mine_vae.generation_mine_vae",
        "mine_vae.pretrained_mine_vae",
        "mine_vae.modeling_mine_vae",
        "mine_vae.pipeline_mine_vae",
        "mine_vae.sentence_mine_vae",
    }
    graph = _graph()
    for module in model_files:
        assert graph[module] <= model_files, (module, graph[module] - model_files)


def test_every_module_has_a_layer():
    parts = {_part(module) for module in _graph()} - {""}
    assert parts <= set(LAYERS) | FEEDERS, parts - set(LAYERS) - FEEDERS
