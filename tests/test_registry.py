"""A method or an export format is one declaration (a table of resources/methods.toml; an `ExportFormat` in
engine.vocabulary): everything else derives from it.

The bar: each method and format name is a string literal in at most 2 non-test source files (its
declaration and at most one place that does something only it does). A throwaway method made of
existing building blocks, registered for one test, shows up in the CLI's choices, the window's check
boxes, the planner, the schemes and the export formats' refusals without touching another file.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from int8wb.engine import vocabulary
from int8wb.engine.errors import BadInput

ROOT = Path(__file__).resolve().parents[1]
SOURCE_FOLDERS = ("engine", "app", "kernels")
MAX_FILES_PER_NAME = 2


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the string constants that stand alone as statements (docstrings, attribute docstrings)."""
    found = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        for statement in body if isinstance(body, list) else ():
            if isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant):
                found.add(id(statement.value))
    return found


def literal_files(names) -> dict[str, set[str]]:
    """name -> the source files holding it as a string constant (docstrings and comments aside)."""
    found: dict[str, set[str]] = {name: set() for name in names}
    for folder in SOURCE_FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            skip = _docstrings(tree)
            for node in ast.walk(tree):
                if isinstance(node, ast.Constant) and node.value in found and id(node) not in skip:
                    found[node.value].add(str(path.relative_to(ROOT)))
    return found


def test_each_method_and_format_name_is_written_in_at_most_two_source_files():
    names = (*vocabulary.METHODS, *vocabulary.EXPORT_FORMATS)
    spread = {name: sorted(files) for name, files in literal_files(names).items() if len(files) > MAX_FILES_PER_NAME}
    assert spread == {}


def test_the_literal_scan_sees_code_and_skips_docstrings(tmp_path):
    tree = ast.parse('"""q8_0 in a docstring"""\nX = "q8_0"\n')
    constants = [n for n in ast.walk(tree) if isinstance(n, ast.Constant) and id(n) not in _docstrings(tree)]
    assert [c.value for c in constants] == ["q8_0"]


def test_the_methods_are_the_tables_of_the_declaration_file_in_its_order():
    import tomllib

    from int8wb.engine.installation import METHOD_DECLARATIONS

    declared = tomllib.loads(METHOD_DECLARATIONS.read_text(encoding="utf-8"))
    assert tuple(declared) == vocabulary.METHODS
    for name, fields in declared.items():
        method = vocabulary.method_of(name)
        assert {field: getattr(method, field) for field in fields} == fields


def test_a_declaration_with_an_unknown_field_names_the_file_and_the_method(tmp_path):
    path = tmp_path / "methods.toml"
    path.write_text(
        '[rows-by-tensor]\nlabel = "x"\nshort_label = "x"\ndescription = "x"\ncolour = "#123456"\n'
        'weight_scale = "row"\nactivations = "tensor"\nbits = 4\n'
    )
    with pytest.raises(ValueError, match=r"methods\.toml: method 'rows-by-tensor': .*'bits'"):
        vocabulary._register_declared_methods(path)
    assert "rows-by-tensor" not in vocabulary.METHODS


def test_every_method_is_w8a8_or_weight_only_and_its_scheme_agrees():
    from int8wb.engine.quant.schemes import SCHEMES

    assert set(vocabulary.W8A8_METHODS) | set(vocabulary.WEIGHT_ONLY_METHODS) == set(vocabulary.METHODS)
    assert not set(vocabulary.W8A8_METHODS) & set(vocabulary.WEIGHT_ONLY_METHODS)
    assert tuple(SCHEMES) == tuple(vocabulary.METHODS)
    for name, scheme in SCHEMES.items():
        assert (scheme.activations != "float") == (name in vocabulary.W8A8_METHODS)


def test_a_method_with_an_unknown_building_block_or_twice_declared_is_refused():
    with pytest.raises(ValueError, match="building block"):
        vocabulary.register_method(_throwaway(weight_scale="column"))
    with pytest.raises(ValueError, match="declared twice"):
        vocabulary.register_method(vocabulary.VECTORWISE)
    with pytest.raises(ValueError, match="scan_need"):
        vocabulary.register_method(_throwaway(outliers="static"))


def _throwaway(**blocks) -> vocabulary.Method:
    """A method made of existing blocks: row-wise weights, one activation scale per call."""
    blocks = {"weight_scale": "row", "activations": "tensor", **blocks}
    return vocabulary.Method(
        "rows-by-tensor", "row weights, tensor activations", "rows by tensor", "A test's method.", "#123456", **blocks
    )


@pytest.fixture
def throwaway():
    method = vocabulary.register_method(_throwaway())
    yield method.name
    vocabulary.unregister_method(method.name)


def test_a_registered_method_is_a_cli_choice(throwaway):
    from int8wb.engine.cli import build_parser

    assert build_parser().parse_args(["export", "--method", throwaway, "--out", "x"]).method == throwaway
    assert throwaway in vocabulary.METHODS and throwaway in vocabulary.W8A8_METHODS


def test_a_registered_method_has_a_check_box(throwaway, qtbot):
    from int8wb.app.views.run_panel import RunPanel, checkbox_cells

    panel = RunPanel()
    qtbot.addWidget(panel)
    box = panel.method_boxes[throwaway]
    assert box.text() == "rows by tensor" and not box.isChecked()
    cells = checkbox_cells()
    assert len(set(cells.values())) == len(cells)  # no two boxes on one cell
    assert cells[throwaway] == (cells["q8_0"][0] + 1, 0)  # under the other INT8 baselines


def test_a_registered_method_is_planned_from_its_blocks(throwaway):
    from int8wb.engine.planning import planner

    shape = planner.LinearShape("l", out_features=64, in_features=128, bias=False, layer=0)
    inventory = planner.WeightInventory((shape,), (0,), 0, 0)
    settings = planner.Settings()
    assert throwaway in planner.PLAN_METHODS
    # Stored like vector-wise (one float32 scale per row), computed in INT8 like it.
    assert planner.weight_terms(inventory, throwaway, settings) == {"int8 weight": 64 * 128, "scales": 4 * 64}
    workspace = planner.workspace_terms(planner.Architecture(**_ARCH), inventory, throwaway, settings)
    assert "int8" in workspace and "dequant" not in workspace


_ARCH = dict(
    name="t",
    num_layers=1,
    hidden_size=128,
    intermediate_size=256,
    num_heads=4,
    num_kv_heads=4,
    head_dim=32,
    vocab_size=100,
    gated_mlp=True,
)


def test_a_registered_method_is_carried_or_refused_by_the_formats_blocks(throwaway):
    from int8wb.engine.checkpoint.layout import check_format
    from int8wb.engine.quant.schemes import scheme_of

    assert scheme_of(throwaway).fields[1].shape == ("out",)
    assert check_format(None, throwaway) == vocabulary.EXPORT_FORMATS[0]
    assert throwaway in vocabulary.FORMAT_METHODS[vocabulary.BITSANDBYTES.name]
    with pytest.raises(BadInput, match=f"{throwaway} cannot be exported as compressed-tensors: .*one scale per tensor"):
        check_format(vocabulary.COMPRESSED_TENSORS.name, throwaway)
    with pytest.raises(BadInput, match=f"export {throwaway} with --format bitsandbytes"):
        check_format(vocabulary.GGUF_Q8_0.name, throwaway)


def test_an_unknown_format_is_a_clear_error():
    from int8wb.engine.checkpoint.layout import check_format

    with pytest.raises(BadInput, match="unknown export format 'zip'; choose from bitsandbytes"):
        check_format("zip", "vectorwise")
