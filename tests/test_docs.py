"""The documentation: the site builds, and every Python snippet in it runs.

- `test_site_builds`: `mkdocs build --strict` of mkdocs.yml into a temporary folder
  (skipped only where mkdocs is not installed: the `docs` extra has it).
- `test_api_reference_covers_the_public_api`: docs/api.md documents every name of
  `vit_hub.__all__`.
- `test_readme_links_resolve`: the README's relative links point at files.
- `test_page_snippets_run[PAGE]`: every ```python block of README.md and docs/*.md. The
  blocks of one page run in order in one fresh Python process, sharing their names (a
  page is a script); one test per page, so pytest-xdist spreads them. A block that fails
  fails the test with the page, the line of the block and the traceback, whose lines are
  the page's own lines. A block is left out only by its fence, with a reason:
  ```python title="not run: needs several hosts"  (mkdocs-material shows the title).

The stand-ins. The snippets name full-size published models (`vit_b32_fe`) that would
be downloaded from Kaggle. They run as written (no text is rewritten) in a world set up
in the test harness alone, through the public API (the library has no test switch):

- Before a page's first block, `stand_in_prelude` registers every variant again
  (`vit_hub.register_variant(name, overwrite=True, ...)`) as a tiny network with the
  same patch size: width 32, 2 blocks, 4 heads, MLP 64; the hybrids one bottleneck unit
  per stage. So each published model keeps its name, handle and 224x224 inputs, and is
  tiny.
- The page's `VIT_HUB_CACHE` holds those stand-ins converted (random weights, exported
  in the published format with `vit_hub.conversion.published_format`, converted and
  parity-checked), for every published model a page names; kagglehub's cache
  (`KAGGLEHUB_CACHE`) holds their SavedModels, as a finished kagglehub download, so a
  first use or `verify=True` "downloads" without network. So do the handles of
  EXTRA_CHECKPOINTS: models a page registers itself. Kaggle itself points at a loopback
  port where nothing answers.
- Ray workers (`embed_images`, `vit_hub.serve`'s replicas) are processes of their own:
  for a page that uses them, the prelude starts Ray with a worker setup hook that
  registers the same stand-ins.
- What snippets leave to the reader is defined by the prelude: `images` (4 float32
  images 224x224 in [-1, 1]) and `labels` (4 class ids below 10); in the working
  directory (a fresh temporary folder) cat.jpg, dog.png, photos/ (4 JPEGs) and
  my_photos/ (8 JPEGs): crops of scikit-learn's two sample photographs.
- PAGE_ENV: the environment of pages that need one (scale-out: JAX with 8 simulated CPU
  devices, for keras.distribution).

The stand-ins are built once, in a child process (the registrations must not reach the
other tests of a pytest worker), under a file lock, into the tests' temporary folder,
keyed by the digest of vit_hub's sources, tests/checkpoints.py and this file.
"""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = ["README.md", *sorted(p.relative_to(REPO).as_posix()
                              for p in (REPO / "docs").glob("*.md"))]

# The tiny network each variant becomes (the patch size is kept).
STAND_IN = dict(hidden_dim=32, num_layers=2, num_heads=4, mlp_dim=64)
STAND_IN_HYBRID_UNITS = (1, 1, 1, 1)
# Checkpoints of models that pages register themselves: handle -> (kind, architecture).
EXTRA_CHECKPOINTS = {
    "me/my-vit/tensorFlow2/vit-m16-fe/1": (
        "fe", dict(patch_size=16, hidden_dim=192, num_layers=4, num_heads=3, mlp_dim=768)),
}
PAGE_ENV = {
    "docs/scale-out.md": {"KERAS_BACKEND": "jax",
                          "XLA_FLAGS": "--xla_force_host_platform_device_count=8"},
}
SEED = 0
PAGE_TIMEOUT_S = 900

_FENCE = re.compile(r"^(\s*)```(.*)$")
_OPT_OUT = re.compile(r'title="not run: *([^"]*)"')


# === Pages and their blocks ===


def python_blocks(page):
    """[(line of the block's first code line, code)] of the page's ```python blocks
    that run; an indented one, or an opt-out without a reason, is an error."""
    lines = (REPO / page).read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, info = match.groups()
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), None)
        assert end is not None, f"{page}:{i + 1}: a code block that is never closed"
        language = info.split()[0] if info.strip() else ""
        if language == "python":
            assert not indent, (f"{page}:{i + 1}: an indented ```python block (in a list?) "
                                "is not run: put it at the margin")
            opt_out = _OPT_OUT.search(info)
            if opt_out:
                assert opt_out.group(1).strip(), (
                    f'{page}:{i + 1}: say why the block is not run: title="not run: REASON"')
            else:
                blocks.append((i + 2, "\n".join(lines[i + 1:end])))
        i = end + 1
    return blocks


def shipped_models():
    """The published catalogue (weights_manifest.json), without what tests registered."""
    import importlib.resources

    text = importlib.resources.files("vit_hub").joinpath("weights_manifest.json").read_text()
    return json.loads(text)["models"]


def named_models():
    """The published models the pages' snippets name (or name by handle)."""
    code = "\n".join(code for page in PAGES for _, code in python_blocks(page))
    return sorted(name for name in shipped_models()
                  if name in code or name.replace("_", "-") in code)


PAGES_WITH_CODE = [page for page in PAGES if python_blocks(page)]


# === The stand-ins (also imported by the page processes) ===


def register_stand_ins():
    """Every registered variant becomes its tiny stand-in, with its own patch size
    (public API only)."""
    import vit_hub

    for name in vit_hub.list_variants():
        config = vit_hub.variant_config(name)
        hybrid = bool(config.get("resnet_units"))
        vit_hub.register_variant(name, overwrite=True, **STAND_IN,
                                 patch_size=config["patch_size"],
                                 resnet_units=STAND_IN_HYBRID_UNITS if hybrid else ())


def stand_in_prelude(ray_workers=False):
    """Runs in a page's process before its first block; returns the names the snippets
    leave to the reader. With `ray_workers` (a page that calls `embed_images` or serves
    with `vit_hub.serve`), it starts Ray for the page, its worker processes registering
    the stand-ins as they start (both run on the Ray instance of the calling process)."""
    import numpy as np

    register_stand_ins()
    if ray_workers:
        import logging

        import ray

        env = {"PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2",
               "KERAS_BACKEND": os.environ.get("KERAS_BACKEND", "tensorflow")}
        ray.init(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
                 runtime_env={"env_vars": env,
                              "worker_process_setup_hook": "tests.test_docs.register_stand_ins"})
    rng = np.random.default_rng(SEED)
    images = rng.uniform(-1, 1, (4, 224, 224, 3)).astype(np.float32)
    labels = np.arange(4) % 10
    return {"images": images, "labels": labels}


def build_stand_ins(folder, names):
    """Child process: the stand-ins of `names` converted into folder/cache, and the
    SavedModels of those and of EXTRA_CHECKPOINTS in folder/saved_models/<handle>."""
    import vit_hub
    from vit_hub.conversion import published_format
    from vit_hub.conversion.pipeline import convert_into_cache

    register_stand_ins()
    folder = Path(folder)

    def export(handle, kind, architecture, image_size=224):
        target = folder / "saved_models" / handle.replace("/", "+")
        config = published_format.HubConfig(
            architecture["patch_size"], architecture["hidden_dim"],
            architecture["num_layers"], architecture["num_heads"], architecture["mlp_dim"],
            num_classes=1000, image_size=image_size,
            resnet_units=tuple(architecture.get("resnet_units", ())))
        params = published_format.init_params(config, kind, seed=SEED)
        published_format.export_saved_model(params, config, kind, str(target))
        return target

    for name in names:
        entry = vit_hub.get_entry(name)
        arch = entry.architecture
        source = export(entry.handle, entry.kind, dict(
            patch_size=arch.patch_size, hidden_dim=arch.hidden_dim,
            num_layers=arch.num_layers, num_heads=arch.num_heads, mlp_dim=arch.mlp_dim,
            resnet_units=arch.resnet_units), entry.image_size[0])
        convert_into_cache(name, cache_dir=folder / "cache", source=source)
    for handle, (kind, architecture) in EXTRA_CHECKPOINTS.items():
        export(handle, kind, architecture)


@pytest.fixture(scope="session")
def stand_ins():
    """The folder of the stand-ins (cache/, saved_models/), built once."""
    from tests import checkpoints

    names = named_models()
    digest = hashlib.sha256(Path(__file__).read_bytes()
                            + json.dumps(names).encode()).hexdigest()[:12]

    def build(staging):  # in a child process: the stand-ins replace the registered variants
        code = (f"import sys; sys.path.insert(0, {str(REPO)!r}); "
                f"from tests.test_docs import build_stand_ins; "
                f"build_stand_ins({str(staging)!r}, {names!r})")
        done = subprocess.run([sys.executable, "-c", code], capture_output=True,
                              text=True, cwd=REPO, env=_child_env())
        if done.returncode != 0:
            raise AssertionError(f"building the docs' stand-ins failed:\n"
                                 f"{done.stdout[-3000:]}\n{done.stderr[-6000:]}")

    return checkpoints.built(f"docs-stand-ins-{digest}", build)


def _child_env(**extra):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("VIT_HUB_", "PYTEST_", "KERAS_BACKEND", "XLA_FLAGS"))}
    env.update(TF_CPP_MIN_LOG_LEVEL="2", KERAS_BACKEND="tensorflow",
               CI="true")  # OpenVINO and NNCF: no usage reports from the tests
    env.update(extra)
    return env


# === The page runner ===

_RUNNER = '''\
import json, sys, traceback
sys.path.insert(0, {repo!r})
from tests.test_docs import stand_in_prelude

namespace = {{"__name__": "__main__"}}
blocks = json.load(open(sys.argv[1]))
namespace.update(stand_in_prelude(any(("embed_images" in code or "vit_hub.serve" in code)
                                     for _, _, code in blocks)))
for page, line, code in blocks:
    try:
        # Padded so that the traceback's line numbers are the page's.
        exec(compile("\\n" * (line - 1) + code, page, "exec"), namespace)
    except BaseException:
        print(f"SNIPPET FAILED: {{page}}, the block at line {{line}}", file=sys.stderr)
        traceback.print_exc()
        sys.exit(1)
'''


def lay_out_world(root, stand_ins):
    """The page's working directory, caches and sample files under `root`."""
    import numpy as np
    from PIL import Image

    from tests.kaggle_server import kaggle_env, lay_out_kagglehub_cache

    shutil.copytree(stand_ins / "cache", root / "cache",
                    ignore=shutil.ignore_patterns("*.lock"))
    for saved_model in (stand_ins / "saved_models").iterdir():
        lay_out_kagglehub_cache(root / "kagglehub", saved_model.name.replace("+", "/"),
                                saved_model)
    work = root / "work"
    rng = np.random.default_rng(SEED)
    # Real photographs (int8 calibration on noise would fail its accuracy gate):
    # 320x240 crops of scikit-learn's two sample images, as vit_hub's own held-out set.
    from sklearn.datasets import load_sample_images

    samples = load_sample_images().images

    def photo(path, size=(320, 240)):
        path.parent.mkdir(parents=True, exist_ok=True)
        sample = samples[rng.integers(len(samples))]
        top = rng.integers(sample.shape[0] - size[1])
        left = rng.integers(sample.shape[1] - size[0])
        Image.fromarray(sample[top:top + size[1], left:left + size[0]]).save(path)

    photo(work / "cat.jpg")
    photo(work / "dog.png")
    for i in range(4):
        photo(work / "photos" / f"photo_{i}.jpg")
    for i in range(8):
        photo(work / "my_photos" / f"photo_{i}.jpg")
    env = kaggle_env(root / "kagglehub", home=root / "home", base=_child_env())
    env["VIT_HUB_CACHE"] = str(root / "cache")
    return work, env


# === Tests ===


def test_site_builds(tmp_path):
    pytest.importorskip("mkdocs", reason="the docs extra is not installed (pip install -e "
                        "'.[docs]'): mkdocs builds the site")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
         str(REPO / "mkdocs.yml"), "--site-dir", str(tmp_path / "site")],
        capture_output=True, text=True, cwd=REPO,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stderr[-6000:]}"
    assert (tmp_path / "site" / "api" / "index.html").is_file()


def test_api_reference_covers_the_public_api():
    import vit_hub

    text = (REPO / "docs" / "api.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^::: vit_hub\.(\w+)$", text, re.MULTILINE))
    missing = [name for name in vit_hub.__all__ if name not in documented]
    assert not missing, f"docs/api.md has no `::: vit_hub.NAME` for {missing}"


def test_readme_links_resolve():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text)
    assert targets, "the README links to the documentation pages"
    missing = [t for t in targets if not (REPO / t).exists()]
    assert not missing, f"README.md links to files that do not exist: {missing}"


def test_opt_outs_are_few():
    """Blocks are left out only with a reason, and rarely."""
    opted = [(page, n + 1) for page in PAGES
             for n, line in enumerate((REPO / page).read_text(encoding="utf-8").splitlines())
             if line.startswith("```python") and _OPT_OUT.search(line)]
    assert len(opted) <= 3, f"blocks not run: {opted}"


@pytest.mark.parametrize("page", PAGES_WITH_CODE)
def test_page_snippets_run(page, stand_ins, tmp_path):
    work, env = lay_out_world(tmp_path, stand_ins)
    env.update(PAGE_ENV.get(page, {}))
    blocks = [(str(REPO / page), line, code) for line, code in python_blocks(page)]
    (tmp_path / "blocks.json").write_text(json.dumps(blocks))
    (tmp_path / "run_page.py").write_text(_RUNNER.format(repo=str(REPO)))
    done = subprocess.run([sys.executable, str(tmp_path / "run_page.py"),
                           str(tmp_path / "blocks.json")],
                          capture_output=True, text=True, cwd=work, env=env,
                          timeout=PAGE_TIMEOUT_S)
    if done.returncode != 0:
        failed = re.search(r"SNIPPET FAILED: .*", done.stderr)
        pytest.fail(f"{page}: {failed.group(0) if failed else 'the page did not run'} "
                    f"(exit status {done.returncode})\n{done.stderr[-8000:]}",
                    pytrace=False)
