"""Build hook: the Hydra config tree lives at the top level (``configs/``) in the repository and is
copied into the package (``sheeprl/configs``) when a wheel is built, so a non-editable install finds it.
Everything else about the package is in pyproject.toml."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildWithConfigs(build_py):
    def run(self) -> None:
        super().run()
        src = Path(__file__).resolve().parent / "configs"
        dst = Path(self.build_lib) / "sheeprl" / "configs"
        if src.is_dir():
            shutil.copytree(src, dst, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))


setup(cmdclass={"build_py": BuildWithConfigs})
