"""Build hook: ship the top-level ``style_templates.json`` (the file users edit, the one
source of truth) inside the package, so a plain ``pip install .`` has its styles.

Everything else about the package is in pyproject.toml."""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

STYLES = Path(__file__).resolve().parent / "style_templates.json"


class BuildPyWithStyles(build_py):
    def run(self) -> None:
        super().run()
        target = Path(self.build_lib) / "photomaker" / STYLES.name
        self.mkpath(str(target.parent))
        self.copy_file(str(STYLES), str(target))

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs = super().get_outputs(include_bytecode)
        return [*outputs, str(Path(self.build_lib) / "photomaker" / STYLES.name)]


setup(cmdclass={"build_py": BuildPyWithStyles})
