"""Build lab images locally from debootstrap recipes, cached by a hash of the recipe.

No image registry is reachable from our machines, so every image is built here: a recipe
directory holds `recipe.yml` (suite, variant, packages, the Docker tag and import changes)
and `customize.sh`, run inside the root once. The image carries the recipe hash as a label;
a build happens only when no image with that label exists.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from . import progress
from .engine import ensure_packages
from .shell import LabError, run

RECIPES = Path(__file__).resolve().parent / "images"
HASH_LABEL = "org.llmlab.recipe-sha256"
# Set LAB_DEBIAN_MIRROR to an internal mirror on air-gapped sites; unset means debootstrap's
# own default for the suite.
MIRROR_ENV = "LAB_DEBIAN_MIRROR"


@dataclass(frozen=True)
class Recipe:
    name: str
    path: Path
    suite: str
    variant: str
    packages: tuple[str, ...]
    tag: str
    changes: tuple[str, ...]

    @classmethod
    def load(cls, name: str) -> Recipe:
        path = RECIPES / name
        spec_file = path / "recipe.yml"
        if not spec_file.is_file():
            known = ", ".join(sorted(p.name for p in RECIPES.iterdir() if p.is_dir()))
            raise LabError(f"no image recipe '{name}' (known: {known})")
        spec = yaml.safe_load(spec_file.read_text())
        return cls(
            name=name,
            path=path,
            suite=spec["suite"],
            variant=spec.get("variant", "minbase"),
            packages=tuple(spec.get("packages", [])),
            tag=spec["docker"]["tag"],
            changes=tuple(spec["docker"].get("changes", [])),
        )

    def digest(self) -> str:
        """Hash of every file in the recipe plus the mirror in use."""
        h = hashlib.sha256()
        for f in sorted(p for p in self.path.rglob("*") if p.is_file()):
            h.update(f.relative_to(self.path).as_posix().encode())
            h.update(f.read_bytes())
        h.update(os.environ.get(MIRROR_ENV, "").encode())
        return h.hexdigest()


def image_recipe_hash(tag: str) -> str | None:
    proc = run(
        ["docker", "image", "inspect", "--format", f'{{{{ index .Config.Labels "{HASH_LABEL}" }}}}', tag],
        check=False,
    )
    return proc.stdout.strip() if proc.returncode == 0 else None


def build_rootfs(recipe: Recipe, target: Path) -> None:
    """debootstrap the recipe's root into target and run its customize script there."""
    ensure_packages(["debootstrap"], ["debootstrap"])
    argv = [
        "debootstrap",
        f"--variant={recipe.variant}",
        f"--include={','.join(recipe.packages)}",
        recipe.suite,
        str(target),
    ]
    mirror = os.environ.get(MIRROR_ENV)
    if mirror:
        argv.append(mirror)
    progress.run_watched(argv, "debootstrap", timeout=1800)
    script = recipe.path / "customize.sh"
    if script.is_file():
        shutil.copy(script, target / "customize.sh")
        try:
            run(["chroot", str(target), "/bin/sh", "/customize.sh"], timeout=600)
        finally:
            (target / "customize.sh").unlink(missing_ok=True)


def ensure_image(name: str, *, force: bool = False) -> str:
    """Return the tag of the recipe's image, building it when missing or out of date."""
    recipe = Recipe.load(name)
    digest = recipe.digest()
    if not force and image_recipe_hash(recipe.tag) == digest:
        progress.info(f"image {recipe.tag} is current (recipe {digest[:12]})")
        return recipe.tag
    if os.geteuid() != 0:
        raise LabError("building images needs root (debootstrap and chroot); run as root")
    with (
        progress.step(f"building image {recipe.tag} from recipe '{name}' (debootstrap {recipe.suite})"),
        tempfile.TemporaryDirectory(prefix=f"llmlab-{name}-") as tmp,
    ):
        root = Path(tmp) / "root"
        build_rootfs(recipe, root)
        changes = [f"LABEL {HASH_LABEL}={digest}", *recipe.changes]
        argv = ["docker", "import"]
        for change in changes:
            argv += ["--change", change]
        argv += ["-", recipe.tag]
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        try:
            proc = subprocess.run(argv, stdin=tar.stdout, capture_output=True, text=True, check=False)
        finally:
            assert tar.stdout is not None
            tar.stdout.close()
            tar.wait()
        if proc.returncode != 0 or tar.returncode != 0:
            raise LabError(f"docker import of {recipe.tag} failed: {proc.stderr.strip()}")
    return recipe.tag
