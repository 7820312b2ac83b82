"""Strategy 9: the README's "Transfer learning" section runs as written, so the docs
cannot rot. Its python blocks run in order in one namespace (they share the setup)."""
import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def _section_blocks():
    text = README.read_text(encoding="utf-8")
    start = text.index("\n## Transfer learning\n")
    end = text.index("\n## ", start + 1)
    return re.findall(r"```python\n(.*?)```", text[start:end], flags=re.S)


def test_readme_transfer_snippets_run(tmp_path, monkeypatch, capsys):
    blocks = _section_blocks()
    assert len(blocks) == 10  # setup + one per strategy (bias-only and LoRA apart)
    monkeypatch.chdir(tmp_path)  # whatever a snippet writes lands in a temporary folder
    namespace = {"__name__": "readme"}
    for number, block in enumerate(blocks):
        exec(compile(block, f"README.md transfer block {number}", "exec"), namespace)
    out = capsys.readouterr().out
    assert "transfer: " in out and "remapped" in out   # the init report was printed
    assert namespace["report"].remapped[0].detail.startswith("vocabulary: 4 of 7 tokens kept")
