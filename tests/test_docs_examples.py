"""The docs' code runs as written, so it cannot rot: the README's quick example, and
docs/transfer.md (strategy 9), whose python blocks run in order in one namespace (they
share the setup)."""
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PYTHON_BLOCK = re.compile(r"```python\n(.*?)```", flags=re.S)


def test_readme_quick_example_runs(capsys):
    blocks = PYTHON_BLOCK.findall((REPO / "README.md").read_text(encoding="utf-8"))
    assert len(blocks) == 1
    namespace = {"__name__": "readme"}
    exec(compile(blocks[0], "README.md quick example", "exec"), namespace)
    assert "weight_hh_l2" in capsys.readouterr().out          # the trainable summary was printed
    assert namespace["lstm"].weight_ih_l0.requires_grad is False


def test_transfer_guide_snippets_run(tmp_path, monkeypatch, capsys):
    blocks = PYTHON_BLOCK.findall((REPO / "docs" / "transfer.md").read_text(encoding="utf-8"))
    assert len(blocks) == 11  # setup + one per strategy (bias-only and LoRA apart)
    monkeypatch.chdir(tmp_path)  # whatever a snippet writes lands in a temporary folder
    namespace = {"__name__": "readme"}
    for number, block in enumerate(blocks):
        exec(compile(block, f"docs/transfer.md block {number}", "exec"), namespace)
    out = capsys.readouterr().out
    assert "transfer: " in out and "remapped" in out   # the init report was printed
    assert namespace["report"].remapped[0].detail.startswith("vocabulary: 4 of 7 tokens kept")


def test_relative_links_in_the_docs_resolve():
    """Every relative link in README.md, docs/ and csrc/README.md names a file that exists."""
    pages = [REPO / "README.md", REPO / "csrc" / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text(encoding="utf-8")):
            if "://" not in target and not (page.parent / target).exists():
                broken.append(f"{page.relative_to(REPO)} -> {target}")
    assert len(pages) >= 8 and not broken, broken
